//! Pipeline files (`pipelines/*.toml`): one table per stage, unknown keys rejected, and
//! `--set table.key=value` overrides applied before parsing.

use anyhow::{Context, Result, bail};
use chatpainter_embed::config::EmbedConfig;
use chatpainter_ingest::IngestConfig;
use chatpainter_ingest::synth::SynthConfig;
use chatpainter_train::TrainConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub run: RunSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synth: Option<SynthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest: Option<IngestConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embed: Option<EmbedConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage1: Option<TrainConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage2: Option<TrainConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<chatpainter_eval::stage::EvalConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<chatpainter_report::ReportConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub seed: u64,
}

impl Pipeline {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading pipeline file {}", path.display()))?;
        let file: Self = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("{}", in_words(&e.to_string()))
                .context(format!("pipeline file {}", path.display()))
        })?;
        if overrides.is_empty() {
            return Ok(file);
        }
        let table: toml::Table = toml::from_str(&text)?;
        let with = |overrides: &[String]| -> Result<Self> {
            let mut t = table.clone();
            for o in overrides {
                apply_override(&mut t, o).with_context(|| format!("--set {o}"))?;
            }
            // From the table itself, not from a rewritten text: an error must not point at a
            // line of a file nobody wrote.
            Self::deserialize(toml::Value::Table(t))
                .map_err(|e| anyhow::anyhow!("{}", in_words(&e.to_string())))
        };
        with(overrides).map_err(|all| {
            // Name the override that breaks the file, as the user typed it.
            match overrides
                .iter()
                .find_map(|o| with(std::slice::from_ref(o)).err().map(|e| (o, e)))
            {
                Some((o, e)) => anyhow::anyhow!("--set {o}: {e:#}"),
                None => all.context(format!(
                    "pipeline file {} with the --set overrides",
                    path.display()
                )),
            }
        })
    }
}

/// Serde's names of Rust types in words a person reads right the first time.
fn in_words(message: &str) -> String {
    const WORDS: [(&str, &str); 9] = [
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected u32", "expected a whole number ≥ 0"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected a quoted string"),
    ];
    WORDS.iter().fold(message.to_string(), |m, (rust, words)| {
        m.replace(rust, words)
    })
}

/// Applies `a.b.c=value`; the value is parsed as TOML (number, bool, array, quoted string) and
/// taken as a bare string otherwise.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').context("expected key=value")?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let (last, path) = parts.split_last().context("empty key")?;
    let mut current = table;
    for p in path {
        let entry = current
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("`{p}` is not a table"),
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("cp-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "[run]\nname = \"x\"\n[synth]\ntrain_images = 3\n").unwrap();
        let p = Pipeline::load(
            &path,
            &[
                "synth.train_images=7".into(),
                "run.description=hello world".into(),
            ],
        )
        .unwrap();
        assert_eq!(p.synth.unwrap().train_images, 7);
        assert_eq!(p.run.description, "hello world");

        let err = format!(
            "{:#}",
            Pipeline::load(&path, &["synth.train_imgs=3".into()]).unwrap_err()
        );
        assert!(
            err.starts_with("--set synth.train_imgs=3: ")
                && err.contains("train_imgs")
                && !err.contains("line"),
            "{err}"
        );

        let err = format!(
            "{:#}",
            Pipeline::load(&path, &["synth.train_images=-1".into()]).unwrap_err()
        );
        assert!(
            err.contains("a whole number ≥ 0") && !err.contains("u64"),
            "{err}"
        );

        std::fs::write(&path, "[run]\nname = \"x\"\n[synth]\ntrain_imgs = 3\n").unwrap();
        let err = format!("{:#}", Pipeline::load(&path, &[]).unwrap_err());
        assert!(
            err.contains("train_imgs") && err.contains("p.toml"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
