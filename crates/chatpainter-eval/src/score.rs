//! Scoring RGB images with one backbone, and the `metrics.json` file that stamps the protocol.
//!
//! [`Scorer`] is what the eval stage and `eval-folder` share, so that a folder of PNGs written by
//! the stage scores to the same numbers as the stage itself (images are quantised to u8 before
//! scoring in both paths). Without a weights file the scorer is *unavailable*: it accepts images,
//! computes nothing, and [`Scorer::finish`] reports both metrics as unavailable with the reason —
//! never a number (no package registry ships the Inception weights, and a guess is worse).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::fid::{FidStatistics, frechet_distance};
use crate::inception::{Backbone, InceptionConfig};
use crate::inception_score::InceptionScoreConfig;
use crate::preprocess::{ImageBatch, Preprocess};
use crate::runner::InceptionRunner;
use crate::weights::{Availability, WeightsProvenance, load_inception};
use chatpainter_formats::metrics::{FidEntry, IsEntry, Protocol};

/// Which network and preprocessing score the images (never compare numbers across them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackboneChoice {
    /// torchvision ImageNet Inception v3 (what ChatPainter reported), input in [-1, 1],
    /// PyTorch bilinear resize; weights `inception_v3_google-0cc3c7bd.pth`.
    #[default]
    Torchvision,
    /// The TF-2015 graph (`pt_inception-2015-12-05-6726825d.pth`) fed as pytorch-fid feeds it:
    /// [0, 1], PyTorch bilinear, `2x − 1`.
    PytorchFid,
    /// The same TF-2015 graph fed as torch-fidelity feeds it: uint8, TF1 bilinear,
    /// `(x − 128)/128` (the StackGAN-era TF numbers).
    TorchFidelity,
}

impl BackboneChoice {
    /// Every choice, in the order benchmarks and help texts list them.
    pub const ALL: [Self; 3] = [Self::Torchvision, Self::PytorchFid, Self::TorchFidelity];

    /// The name used in config files, on the command line and in `metrics.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::PytorchFid => "pytorch-fid",
            Self::TorchFidelity => "torch-fidelity",
        }
    }

    /// The network flavour.
    pub fn backbone(self) -> Backbone {
        match self {
            Self::Torchvision => Backbone::TorchvisionImagenet,
            Self::PytorchFid | Self::TorchFidelity => Backbone::TfInception2015,
        }
    }

    /// The network config: no aux head (never run), `transform_input` off (we feed [-1, 1]).
    pub fn config(self) -> InceptionConfig {
        InceptionConfig::new(self.backbone())
    }

    /// The preprocessing recipe matched to the backbone.
    pub fn preprocess(self) -> Preprocess {
        match self {
            Self::Torchvision => Preprocess::Torchvision {
                transform_input: false,
            },
            Self::PytorchFid => Preprocess::PytorchFid,
            Self::TorchFidelity => Preprocess::TorchFidelity,
        }
    }

    /// How images reach the network, stamped into `metrics.json`.
    pub fn resize_label(self) -> &'static str {
        match self {
            Self::Torchvision => {
                "u8 RGB -> [-1,1]; bilinear to 299x299, PyTorch align_corners=False, no antialias"
            }
            Self::PytorchFid => {
                "u8 RGB -> [0,1]; bilinear to 299x299, PyTorch align_corners=False, no antialias; 2x-1"
            }
            Self::TorchFidelity => {
                "u8 RGB; bilinear to 299x299, TF1 (no half-pixel offset); (x-128)/128"
            }
        }
    }
}

impl std::str::FromStr for BackboneChoice {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                EvalError::Config(format!(
                    "backbone {s:?}: expected one of \"torchvision\", \"pytorch-fid\", \"torch-fidelity\""
                ))
            })
    }
}

impl std::fmt::Display for BackboneChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Settings shared by the eval stage and `eval-folder`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreSettings {
    pub backbone: BackboneChoice,
    /// Inception weights; `None` makes both metrics unavailable.
    pub weights: Option<PathBuf>,
    pub splits: usize,
    /// Seed of the IS shuffle.
    pub seed: u64,
    /// Inception Score over `splits` random subsets of this many images (the paper's
    /// protocol) instead of `splits` chunks.
    pub subset_size: Option<usize>,
}

/// Where the FID reference statistics come from.
#[derive(Debug, Clone)]
pub enum FidReference {
    /// Statistics already in memory, with the label written as `fid.reference`.
    Stats {
        stats: Box<FidStatistics>,
        label: String,
    },
    /// No reference: FID is unavailable for this reason.
    Missing(String),
}

impl FidReference {
    /// Reads an `.npz` with `mu` and `sigma`; the label is the path as given.
    pub fn from_npz(path: &Path) -> Result<Self> {
        Ok(Self::Stats {
            stats: Box::new(FidStatistics::load_npz(path)?),
            label: path.display().to_string(),
        })
    }
}

/// Feeds RGB images through one loaded Inception (or, without weights, only counts them).
pub struct Scorer {
    settings: ScoreSettings,
    runner: Option<InceptionRunner>,
    unavailable: Option<String>,
    provenance: Option<WeightsProvenance>,
    count: usize,
}

impl Scorer {
    /// Loads the weights (if any) onto `device`.
    ///
    /// # Errors
    /// `splits == 0`; a weights file that is missing, unreadable or of the other backbone
    /// (named with the file and tensor).
    pub fn new(settings: &ScoreSettings, device: &Device) -> Result<Self> {
        if settings.splits == 0 {
            return Err(EvalError::Config("splits must be at least 1".into()));
        }
        let config = settings.backbone.config();
        let (runner, unavailable, provenance) =
            match load_inception(&config, settings.weights.as_deref(), device)? {
                Availability::Available(loaded) => {
                    let provenance = loaded.provenance.clone();
                    let runner =
                        InceptionRunner::new(loaded, settings.backbone.preprocess(), device)?;
                    (Some(runner), None, Some(provenance))
                }
                Availability::Unavailable { reason } => (None, Some(reason), None),
            };
        Ok(Self {
            settings: settings.clone(),
            runner,
            unavailable,
            provenance,
            count: 0,
        })
    }

    /// Whether numbers will be computed.
    pub fn available(&self) -> bool {
        self.runner.is_some()
    }

    /// Images pushed so far (since the last [`Scorer::reset`]).
    pub fn count(&self) -> usize {
        self.count
    }

    /// Where the weights came from, when there are any.
    pub fn provenance(&self) -> Option<&WeightsProvenance> {
        self.provenance.as_ref()
    }

    /// Scores a batch; consecutive images of equal size go through the network together.
    pub fn push(&mut self, images: &[&image::RgbImage]) -> Result<()> {
        self.count += images.len();
        let Some(runner) = self.runner.as_mut() else {
            return Ok(());
        };
        let mut start = 0;
        while start < images.len() {
            let dims = images[start].dimensions();
            let end = images[start..]
                .iter()
                .position(|i| i.dimensions() != dims)
                .map_or(images.len(), |k| start + k);
            let mut data =
                Vec::with_capacity((end - start) * dims.0 as usize * dims.1 as usize * 3);
            for img in &images[start..end] {
                data.extend_from_slice(img.as_raw());
            }
            runner.push(&ImageBatch::U8Nhwc {
                data: &data,
                n: end - start,
                height: dims.1 as usize,
                width: dims.0 as usize,
            })?;
            start = end;
        }
        Ok(())
    }

    /// Forgets the images pushed so far (keeps the network).
    pub fn reset(&mut self) -> Result<()> {
        self.count = 0;
        if let Some(r) = self.runner.as_mut() {
            r.reset()?;
        }
        Ok(())
    }

    /// FID statistics of the images pushed so far; `Err` with the reason when they cannot be
    /// computed (no weights, fewer than 2 images).
    pub fn fid_statistics(&self) -> std::result::Result<FidStatistics, String> {
        match &self.runner {
            None => Err(self.unavailable_reason()),
            Some(r) => r.fid_statistics().map_err(|e| e.to_string()),
        }
    }

    fn unavailable_reason(&self) -> String {
        self.unavailable
            .clone()
            .unwrap_or_else(|| "no Inception network loaded".into())
    }

    /// The metric entries for the images pushed so far against `reference`.
    pub fn finish(&self, reference: &FidReference) -> (IsEntry, FidEntry) {
        let Some(runner) = &self.runner else {
            let reason = self.unavailable_reason();
            return (
                IsEntry {
                    available: false,
                    mean: None,
                    std: None,
                    reason: Some(reason.clone()),
                },
                FidEntry {
                    available: false,
                    value: None,
                    reason: Some(reason),
                    reference: None,
                },
            );
        };
        let is = match runner.inception_score(InceptionScoreConfig {
            splits: self.settings.splits,
            shuffle_seed: Some(self.settings.seed),
            subset_size: self.settings.subset_size,
        }) {
            Ok(s) if s.mean.is_finite() && s.std.is_finite() => IsEntry {
                available: true,
                mean: Some(s.mean),
                std: Some(s.std),
                reason: None,
            },
            Ok(s) => IsEntry {
                available: false,
                mean: None,
                std: None,
                reason: Some(format!("non-finite score {} ± {}", s.mean, s.std)),
            },
            Err(e) => IsEntry {
                available: false,
                mean: None,
                std: None,
                reason: Some(format!(
                    "{} images, {} splits: {e}",
                    self.count, self.settings.splits
                )),
            },
        };
        let unavailable_fid = |reason: String, reference: Option<String>| FidEntry {
            available: false,
            value: None,
            reason: Some(reason),
            reference,
        };
        let fid = match reference {
            FidReference::Missing(reason) => unavailable_fid(reason.clone(), None),
            FidReference::Stats { stats, label } => match runner
                .fid_statistics()
                .and_then(|own| frechet_distance(&own, stats))
            {
                Ok(f) if f.fid.is_finite() => FidEntry {
                    available: true,
                    value: Some(f.fid),
                    reason: None,
                    reference: Some(label.clone()),
                },
                Ok(f) => unavailable_fid(format!("non-finite FID {}", f.fid), Some(label.clone())),
                Err(e) => unavailable_fid(e.to_string(), Some(label.clone())),
            },
        };
        (is, fid)
    }

    /// The protocol stamp for `images` scored images (generator fields left `null`).
    pub fn protocol(&self, images: usize) -> Protocol {
        Protocol {
            backbone: self.settings.backbone.name().into(),
            weights_file: self
                .settings
                .weights
                .as_ref()
                .map(|p| p.display().to_string()),
            weights_sha256: self.provenance.as_ref().map(|p| p.sha256.clone()),
            images,
            splits: self.settings.splits,
            subset_size: self.settings.subset_size,
            seed: self.settings.seed,
            resize: self.settings.backbone.resize_label().into(),
            generator_stage: None,
            checkpoint: None,
            step: None,
            split: None,
            ca: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is how a test fails
mod tests {
    use super::*;
    use chatpainter_formats::metrics::MetricsFile;

    #[test]
    fn no_weights_gives_reasons_and_no_numbers() {
        let settings = ScoreSettings {
            backbone: BackboneChoice::Torchvision,
            weights: None,
            splits: 10,
            seed: 3,
            subset_size: None,
        };
        let mut s = Scorer::new(&settings, &Device::flex()).unwrap();
        let img = image::RgbImage::new(8, 8);
        s.push(&[&img, &img]).unwrap();
        assert_eq!(s.count(), 2);
        let (is, fid) = s.finish(&FidReference::Missing("none".into()));
        assert!(!is.available && is.mean.is_none() && is.std.is_none());
        assert!(
            is.reason
                .unwrap()
                .contains("inception_v3_google-0cc3c7bd.pth")
        );
        assert!(!fid.available && fid.value.is_none());
        let m = MetricsFile {
            protocol: s.protocol(2),
            inception_score: IsEntry {
                available: false,
                mean: None,
                std: None,
                reason: Some("r".into()),
            },
            fid,
            scenes: None,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert!(v["inception_score"]["mean"].is_null());
        assert_eq!(v["protocol"]["backbone"], "torchvision");
        assert!(v["protocol"]["generator_stage"].is_null());
        let keys: Vec<&String> = v["protocol"].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 11);
    }

    #[test]
    fn backbone_names_parse() {
        for c in BackboneChoice::ALL {
            assert_eq!(c.name().parse::<BackboneChoice>().unwrap(), c);
        }
        let err = "tf".parse::<BackboneChoice>().unwrap_err().to_string();
        assert!(err.contains("pytorch-fid"), "{err}");
    }
}
