//! The stage DAG as xtask sees it: which stages a pipeline file has (a stage is present iff its
//! table is), their order, the `chatpainter` subcommand of each, `--from/--to` ranges and the
//! `--devices` pass-through. The schema of each table belongs to the CLI, which rejects unknown
//! keys; xtask only knows the table names.

use anyhow::{Context, Result, bail};
use chatpainter_artifacts::Stage;
use chatpainter_artifacts::device::DeviceName;
use std::path::{Path, PathBuf};

/// The `chatpainter` subcommand that runs a stage.
pub fn subcommand(stage: Stage) -> Vec<&'static str> {
    if stage.is_training() {
        vec!["train", stage.name()]
    } else {
        vec![stage.name()]
    }
}

/// A pipeline file: its raw table and the stages it defines, in DAG order.
#[derive(Debug, Clone)]
pub struct PipelineFile {
    pub path: PathBuf,
    pub table: toml::Table,
    pub stages: Vec<Stage>,
}

impl PipelineFile {
    /// Reads the file; an unknown top-level table is an error naming the file and the table.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline file {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("pipeline file {}", path.display()))?;
        for (key, value) in &table {
            if key != "run" && key.parse::<Stage>().is_err() {
                bail!(
                    "{}: unknown table [{key}] (known: run, {})",
                    path.display(),
                    Stage::names(", ")
                );
            }
            if !value.is_table() {
                bail!("{}: `{key}` must be a table ([{key}])", path.display());
            }
        }
        if !table.contains_key("run") {
            bail!("{}: no [run] table (it names the pipeline)", path.display());
        }
        let stages = Stage::ALL
            .into_iter()
            .filter(|s| table.contains_key(s.name()))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            table,
            stages,
        })
    }

    pub fn has(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }

    /// This pipeline's stages joined by `sep`, in DAG order (for messages).
    pub fn stage_list(&self, sep: &str) -> String {
        join(&self.stages, sep)
    }

    /// Checks that a stage name given on the command line is one of this pipeline's stages.
    pub fn check_stage(&self, flag: &str, name: &str) -> Result<Stage> {
        let Ok(stage) = name.parse::<Stage>() else {
            bail!(
                "{flag} {name}: no such stage (stages: {})",
                Stage::names(", ")
            );
        };
        if !self.has(stage) {
            bail!(
                "{flag} {stage}: {} has no [{stage}] table (its stages: {})",
                self.path.display(),
                self.stage_list(", ")
            );
        }
        Ok(stage)
    }

    /// The contiguous range `from..=to` of this pipeline's stages.
    pub fn select(&self, from: Option<&str>, to: Option<&str>) -> Result<Vec<Stage>> {
        let index = |flag: &str, s: &str| -> Result<usize> {
            let stage = self.check_stage(flag, s)?;
            Ok(self.stages.iter().position(|x| *x == stage).unwrap_or(0))
        };
        let lo = from.map(|s| index("--from", s)).transpose()?.unwrap_or(0);
        let hi = match to {
            Some(s) => index("--to", s)?,
            None => self.stages.len().saturating_sub(1),
        };
        if lo > hi {
            bail!(
                "--from {} comes after --to {} in the stage order ({})",
                from.unwrap_or_default(),
                to.unwrap_or_default(),
                self.stage_list(" → ")
            );
        }
        Ok(self.stages[lo..=hi].to_vec())
    }

    /// Checks each `--set key=value`: it must be `key=value` and name a table this file has
    /// (the CLI would otherwise create a table the pipeline does not define).
    pub fn check_overrides(&self, overrides: &[String]) -> Result<()> {
        for o in overrides {
            let Some((key, _)) = o.split_once('=') else {
                bail!("--set {o}: expected key=value, e.g. --set stage1.max_steps=10");
            };
            let first = key.trim().split('.').next().unwrap_or_default();
            if key.trim().split('.').count() < 2 {
                bail!("--set {o}: the key must name a table and a key, e.g. stage1.max_steps");
            }
            if first != "run" && !self.table.contains_key(first) {
                bail!(
                    "--set {o}: {} has no [{first}] table (its stages: {})",
                    self.path.display(),
                    self.stage_list(", ")
                );
            }
        }
        Ok(())
    }

    /// The `device` a stage will get: the last `--set <stage>.device=…`, else the file's.
    pub fn device_of(&self, stage: Stage, overrides: &[String]) -> Option<String> {
        let key = format!("{stage}.device");
        let from_set = overrides.iter().rev().find_map(|o| {
            let (k, v) = o.split_once('=')?;
            (k.trim() == key).then(|| toml_scalar(v))
        });
        from_set.or_else(|| {
            self.table
                .get(stage.name())?
                .get("device")?
                .as_str()
                .map(str::to_string)
        })
    }
}

/// Stage names joined by `sep`.
pub fn join(stages: &[Stage], sep: &str) -> String {
    stages
        .iter()
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(sep)
}

/// A `--set` value as the CLI reads it: TOML if it parses, else the bare text.
fn toml_scalar(raw: &str) -> String {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(t) => match t.get("v") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => raw.to_string(),
        },
        Err(_) => raw.trim().to_string(),
    }
}

/// Which libtorch a build needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Libtorch {
    /// CPU only: link against the symlink folder without the CUDA libraries.
    Cpu,
    /// CUDA: link against the full lib folder (libtorch_cuda included).
    Cuda,
}

/// What `--devices` asks for: one device, or one data-parallel rank per listed device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Burn's flex CPU backend, this many ranks (`cpu`, `cpu,cpu`).
    Cpu(usize),
    /// LibTorch on the CPU, this many ranks (`tch-cpu`, `tch-cpu,tch-cpu`).
    TchCpu(usize),
    /// LibTorch CUDA devices, by index, one rank each (`cuda:0`, `cuda:0,1`, `cuda:0,cuda:1`).
    Cuda(Vec<u32>),
}

impl std::str::FromStr for Devices {
    type Err = anyhow::Error;

    /// Each listed device is a name of the workspace's one device grammar
    /// ([`DeviceName`]); after a `cuda:N`, a bare index is the next GPU (`cuda:0,1`).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let mut names: Vec<DeviceName> = Vec::new();
        for part in s.split(',').map(str::trim) {
            let gpu_index = part.chars().all(|c| c.is_ascii_digit())
                && matches!(names.last(), Some(DeviceName::Cuda(_)));
            let text = if gpu_index {
                format!("cuda:{part}")
            } else {
                part.to_string()
            };
            names.push(
                text.parse()
                    .map_err(|e| anyhow::anyhow!("--devices {s}: {e}"))?,
            );
        }
        let all = |kind: DeviceName| names.iter().all(|n| *n == kind);
        if all(DeviceName::Cpu) {
            return Ok(Self::Cpu(names.len()));
        }
        if all(DeviceName::TchCpu) {
            return Ok(Self::TchCpu(names.len()));
        }
        let mut ids = Vec::new();
        for name in &names {
            let DeviceName::Cuda(id) = *name else {
                bail!(
                    "--devices {s}: expected cpu, tch-cpu or cuda:0, or a list of one kind for \
                     data-parallel ranks (cpu,cpu; cuda:0,1)"
                );
            };
            let id = u32::try_from(id).with_context(|| format!("--devices {s}: cuda:{id}"))?;
            if ids.contains(&id) {
                bail!("--devices {s}: cuda:{id} is listed twice");
            }
            ids.push(id);
        }
        Ok(Self::Cuda(ids))
    }
}

impl Devices {
    /// Data-parallel ranks of the training stages.
    pub fn ranks(&self) -> usize {
        match self {
            Self::Cpu(n) | Self::TchCpu(n) => *n,
            Self::Cuda(ids) => ids.len(),
        }
    }

    /// The training stages' `device` key: each rank's device. Several GPUs become `cuda` (rank
    /// k of the machine on `cuda:k`) with [`Devices::visible_gpus`] naming the listed ones.
    pub fn train_value(&self) -> String {
        match self {
            Self::Cuda(ids) if ids.len() > 1 => "cuda".into(),
            _ => self.eval_value(),
        }
    }

    /// The eval stage's `device` key: the first listed device (eval runs in one process).
    pub fn eval_value(&self) -> String {
        match self {
            Self::Cpu(_) => "cpu".into(),
            Self::TchCpu(_) => "tch-cpu".into(),
            Self::Cuda(ids) => format!("cuda:{}", ids.first().copied().unwrap_or(0)),
        }
    }

    /// `CUDA_VISIBLE_DEVICES` for data-parallel GPU ranks: the listed GPUs, so that local rank k
    /// binds to the k-th of them.
    pub fn visible_gpus(&self) -> Option<String> {
        match self {
            Self::Cuda(ids) if ids.len() > 1 => {
                Some(ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
            }
            _ => None,
        }
    }
}

/// The libtorch a `device` value (or the first of a `--devices` list) needs, if any.
pub fn libtorch_for(device: &str) -> Option<Libtorch> {
    let first = device.split(',').next().unwrap_or_default();
    match first.parse::<DeviceName>().ok()? {
        d if d.is_cuda() => Some(Libtorch::Cuda),
        d if d.is_libtorch() => Some(Libtorch::Cpu),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<PipelineFile> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text)?;
        PipelineFile::load(&path)
    }

    #[test]
    fn stages_ranges_and_errors() -> Result<()> {
        let p =
            file("[run]\nname='x'\n[stage1]\ndevice='cpu'\n[ingest]\n[embed]\n[report]\nx=1\n")?;
        assert_eq!(
            p.stages,
            [Stage::Ingest, Stage::Embed, Stage::Stage1, Stage::Report]
        );
        assert_eq!(
            p.select(Some("embed"), Some("stage1"))?,
            [Stage::Embed, Stage::Stage1]
        );
        assert_eq!(p.select(None, None)?.len(), 4);
        let err = p.select(Some("stage2"), None).unwrap_err().to_string();
        assert!(err.contains("no [stage2] table"), "{err}");
        let err = p
            .select(Some("stage1"), Some("ingest"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("comes after"), "{err}");
        assert!(p.check_overrides(&["stage2.lr=1".into()]).is_err());
        assert!(p.check_overrides(&["stage1.max_steps".into()]).is_err());
        p.check_overrides(&["stage1.max_steps=3".into(), "run.seed=1".into()])?;
        assert_eq!(p.device_of(Stage::Stage1, &[]).as_deref(), Some("cpu"));
        assert_eq!(
            p.device_of(Stage::Stage1, &["stage1.device=\"cuda:0,cuda:1\"".into()])
                .as_deref(),
            Some("cuda:0,cuda:1")
        );
        let err = file("[run]\nname='x'\n[stage3]\n").unwrap_err().to_string();
        assert!(err.contains("p.toml") && err.contains("[stage3]"), "{err}");
        Ok(())
    }

    #[test]
    fn devices() -> Result<()> {
        assert_eq!("cpu".parse::<Devices>()?, Devices::Cpu(1));
        let two = "cpu, cpu".parse::<Devices>()?;
        assert_eq!(
            (two.ranks(), two.train_value(), two.eval_value()),
            (2, "cpu".into(), "cpu".into())
        );
        let gpus = "cuda:0,cuda:2".parse::<Devices>()?;
        assert_eq!((gpus.ranks(), gpus.train_value()), (2, "cuda".into()));
        assert_eq!(gpus.eval_value(), "cuda:0");
        assert_eq!(gpus.visible_gpus().as_deref(), Some("0,2"));
        assert_eq!("cuda:1".parse::<Devices>()?.train_value(), "cuda:1");
        assert_eq!("tch-cpu".parse::<Devices>()?.train_value(), "tch-cpu");
        assert!("gpu".parse::<Devices>().is_err());
        assert!("cpu,tch-cpu".parse::<Devices>().is_err());
        assert!("cuda:0,0".parse::<Devices>().is_err());
        assert_eq!(libtorch_for("cuda:0,cuda:1"), Some(Libtorch::Cuda));
        assert_eq!(libtorch_for("tch-cpu"), Some(Libtorch::Cpu));
        assert_eq!(libtorch_for("cpu"), None);
        assert_eq!(subcommand(Stage::Stage2), ["train", "stage2"]);
        assert_eq!(subcommand(Stage::Eval), ["eval"]);
        Ok(())
    }
}
