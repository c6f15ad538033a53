//! Device choice: the text forms of [`TrainDevice`] (`cpu`, `tch-cpu`, `cuda:N`), the list form
//! for data-parallel training ([`DeviceList`], `cuda:0,cuda:1` or `cpu,cpu`), and the mapping of
//! each choice to Burn devices.
//!
//! The LibTorch devices need the `tch` cargo feature; a build without it refuses them when the
//! text is parsed (config, checkpoint state or command line) with a [`DeviceError`] saying how to
//! build with it, so no later code has to handle a device this binary cannot drive. A `cuda:N`
//! that this machine lacks shows up as a panic inside tch on first use; [`TrainDevice::probe`]
//! turns that into an error, so call it before training.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::TrainError;
use crate::config::TrainDevice;

/// A device string that cannot be used by this build or on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the known forms.
    #[error(
        "device `{0}`: unknown (known: cpu, tch-cpu, cuda:N, or a comma-separated list of them)"
    )]
    Unknown(String),
    /// A LibTorch device in a build without the `tch` feature.
    #[error(
        "device `{0}` runs on LibTorch, which this build of chatpainter leaves out: build with \
         libtorch (`cargo xtask run … --devices {0}`, or `cargo build --release --features tch` \
         with LIBTORCH set, see spec/libtorch.md), or use `cpu`"
    )]
    NeedsTch(String),
    /// An empty device list.
    #[error("device list `{0}` is empty")]
    EmptyList(String),
    /// The device exists in this build but failed its first use (no GPU, no driver, …).
    #[error("device `{device}` is not usable here: {message}")]
    Unusable { device: String, message: String },
}

impl From<DeviceError> for TrainError {
    fn from(e: DeviceError) -> Self {
        TrainError::Config(e.to_string())
    }
}

impl fmt::Display for TrainDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            #[cfg(feature = "tch")]
            Self::TchCpu => f.write_str("tch-cpu"),
            #[cfg(feature = "tch")]
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for TrainDevice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let cuda_index = t
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok());
        match t {
            "cpu" | "flex" => Ok(Self::Cpu),
            #[cfg(feature = "tch")]
            "tch-cpu" => Ok(Self::TchCpu),
            #[cfg(not(feature = "tch"))]
            "tch-cpu" => Err(DeviceError::NeedsTch(t.to_owned())),
            _ => match cuda_index {
                #[cfg(feature = "tch")]
                Some(i) => Ok(Self::Cuda(i)),
                #[cfg(not(feature = "tch"))]
                Some(_) => Err(DeviceError::NeedsTch(t.to_owned())),
                None => Err(DeviceError::Unknown(t.to_owned())),
            },
        }
    }
}

impl TryFrom<String> for TrainDevice {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrainDevice> for String {
    fn from(d: TrainDevice) -> Self {
        d.to_string()
    }
}

impl TrainDevice {
    /// `(training device with autodiff, inference device)`.
    ///
    /// For `cuda:N` on a machine without that GPU, tch panics on first use: call
    /// [`TrainDevice::probe`] first.
    // burn-tch is deprecated in favour of CubeCL backends that cannot be built here
    // (spec/burn.md §1); it is the only GPU path this project has.
    #[allow(deprecated)]
    pub fn devices(self) -> (Device, Device) {
        let inference = match self {
            Self::Cpu => Device::flex(),
            #[cfg(feature = "tch")]
            Self::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            Self::Cuda(i) => Device::libtorch_cuda(i),
        };
        (inference.clone().autodiff(), inference)
    }

    /// Whether this device runs on LibTorch.
    pub fn is_libtorch(self) -> bool {
        !matches!(self, Self::Cpu)
    }

    /// Runs one tiny computation on the device, turning LibTorch's panic for a missing GPU or
    /// driver into [`DeviceError::Unusable`].
    ///
    /// # Errors
    /// [`DeviceError::Unusable`] with LibTorch's message.
    pub fn probe(self) -> Result<(), DeviceError> {
        if !self.is_libtorch() {
            // Flex has no failure mode to probe for; keep the global panic hook untouched.
            return Ok(());
        }
        let run = std::panic::AssertUnwindSafe(|| {
            let (_, device) = self.devices();
            Tensor::<1>::ones([2], &device).sum().into_scalar::<f32>()
        });
        // tch reports a missing GPU/driver by panicking; keep its message for our error
        // instead of letting the default hook print a panic report first.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = std::panic::catch_unwind(run);
        std::panic::set_hook(previous);
        match outcome {
            Ok(2.0) => Ok(()),
            Ok(v) => Err(DeviceError::Unusable {
                device: self.to_string(),
                message: format!("1 + 1 gave {v}"),
            }),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "panicked".to_owned());
                Err(DeviceError::Unusable {
                    device: self.to_string(),
                    message,
                })
            }
        }
    }

    /// Parses the list form (`cuda:0,cuda:1`, `cpu,cpu`, or one device).
    ///
    /// # Errors
    /// The first entry's [`DeviceError`], or [`DeviceError::EmptyList`].
    pub fn parse_list(s: &str) -> Result<Vec<Self>, DeviceError> {
        Ok(s.parse::<DeviceList>()?.0)
    }
}

/// One or more devices for data-parallel training (one replica per entry; the same device may
/// repeat, e.g. `cpu,cpu` tests the data-parallel path without GPUs). Written as a
/// comma-separated string in configs and on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceList(Vec<TrainDevice>);

impl DeviceList {
    /// A list of one device.
    pub fn single(device: TrainDevice) -> Self {
        Self(vec![device])
    }

    /// The devices, in replica order (never empty).
    pub fn as_slice(&self) -> &[TrainDevice] {
        &self.0
    }

    /// The first device: the one that holds the optimiser state and the exported weights.
    pub fn primary(&self) -> TrainDevice {
        self.0.first().copied().unwrap_or_default()
    }

    /// [`TrainDevice::devices`] of every entry.
    pub fn devices(&self) -> Vec<(Device, Device)> {
        self.0.iter().map(|d| d.devices()).collect()
    }

    /// [`TrainDevice::probe`] of every distinct entry.
    ///
    /// # Errors
    /// The first failing device's error.
    pub fn probe(&self) -> Result<(), DeviceError> {
        let mut seen = Vec::new();
        for d in &self.0 {
            if !seen.contains(d) {
                d.probe()?;
                seen.push(*d);
            }
        }
        Ok(())
    }
}

impl Default for DeviceList {
    fn default() -> Self {
        Self::single(TrainDevice::Cpu)
    }
}

impl FromStr for DeviceList {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let devices = s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<TrainDevice>, _>>()?;
        if devices.is_empty() {
            return Err(DeviceError::EmptyList(s.to_owned()));
        }
        Ok(Self(devices))
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl TryFrom<String> for DeviceList {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceList> for String {
    fn from(d: DeviceList) -> Self {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        assert_eq!("cpu".parse::<TrainDevice>(), Ok(TrainDevice::Cpu));
        assert_eq!("flex".parse::<TrainDevice>(), Ok(TrainDevice::Cpu));
        assert_eq!(TrainDevice::Cpu.to_string(), "cpu");
        let json = serde_json::to_string(&TrainDevice::Cpu).expect("ser");
        assert_eq!(json, "\"cpu\"");
        let list: DeviceList = "cpu, cpu".parse().expect("list");
        assert_eq!(list.as_slice(), &[TrainDevice::Cpu, TrainDevice::Cpu]);
        assert_eq!(list.to_string(), "cpu,cpu");
        assert_eq!(list.devices().len(), 2);
        assert!(matches!(
            "".parse::<DeviceList>(),
            Err(DeviceError::EmptyList(_))
        ));
        assert!(matches!(
            "gpu".parse::<TrainDevice>(),
            Err(DeviceError::Unknown(_))
        ));
        assert!(matches!(
            "cuda:x".parse::<TrainDevice>(),
            Err(DeviceError::Unknown(_))
        ));
        TrainDevice::Cpu.probe().expect("flex works");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_need_the_feature() {
        for s in ["tch-cpu", "cuda:0", "cuda:3"] {
            let e = s.parse::<TrainDevice>().expect_err("refused");
            assert_eq!(e, DeviceError::NeedsTch(s.into()));
            let msg = e.to_string();
            assert!(
                msg.contains("--features tch") && msg.contains("--devices"),
                "{msg}"
            );
        }
        let e = TrainDevice::parse_list("cuda:0,cuda:1").expect_err("refused");
        assert_eq!(e, DeviceError::NeedsTch("cuda:0".into()));
        let e = serde_json::from_str::<TrainDevice>("\"tch-cpu\"").expect_err("refused");
        assert!(e.to_string().contains("--features tch"), "{e}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_devices_parse_with_the_feature() {
        assert_eq!("tch-cpu".parse::<TrainDevice>(), Ok(TrainDevice::TchCpu));
        assert_eq!("cuda:1".parse::<TrainDevice>(), Ok(TrainDevice::Cuda(1)));
        assert_eq!(TrainDevice::Cuda(1).to_string(), "cuda:1");
        assert_eq!(
            TrainDevice::parse_list("cuda:0,cuda:1"),
            Ok(vec![TrainDevice::Cuda(0), TrainDevice::Cuda(1)])
        );
        TrainDevice::TchCpu.probe().expect("libtorch CPU works");
    }
}
