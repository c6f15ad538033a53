//! Device choice: the text forms of [`TrainDevice`] (`cpu`, `tch-cpu`, `cuda:N`, `cuda` for the
//! rank's local GPU) and the mapping of each choice to Burn devices. Data-parallel training runs
//! one process per device ([`crate::ranks`]); a list of devices is refused with that advice.
//!
//! The LibTorch devices need the `tch` cargo feature; a build without it refuses them when the
//! text is parsed (config, checkpoint state or command line) with a [`DeviceError`] saying how to
//! build with it, so no later code has to handle a device this binary cannot drive. A `cuda:N`
//! that this machine lacks shows up as a panic inside tch on first use; [`TrainDevice::probe`]
//! turns that into an error, so call it before training.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::TrainError;
use crate::config::TrainDevice;

/// A device string that cannot be used by this build or on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the known forms.
    #[error("device `{0}`: unknown (known: cpu, tch-cpu, cuda:N, cuda)")]
    Unknown(String),
    /// A comma-separated list: the old one-process data-parallel form.
    #[error(
        "device `{0}`: one process trains on one device; for data-parallel training start one \
         rank per device (`mpirun -n 2 chatpainter train …` with device `cpu` or `cuda`, or \
         `cargo xtask run … --devices {0}`)"
    )]
    List(String),
    /// A LibTorch device in a build without the `tch` feature.
    #[error(
        "device `{0}` runs on LibTorch, which this build of chatpainter leaves out: build with \
         libtorch (`cargo xtask run … --devices {0}`, or `cargo build --release --features tch` \
         with LIBTORCH set, as the README's libtorch section says), or use `cpu`"
    )]
    NeedsTch(String),
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
            #[cfg(feature = "tch")]
            Self::CudaLocalRank => f.write_str("cuda"),
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
        if t.contains(',') {
            return Err(DeviceError::List(t.to_owned()));
        }
        match t {
            "cpu" | "flex" => Ok(Self::Cpu),
            #[cfg(feature = "tch")]
            "tch-cpu" => Ok(Self::TchCpu),
            #[cfg(feature = "tch")]
            "cuda" => Ok(Self::CudaLocalRank),
            #[cfg(not(feature = "tch"))]
            "tch-cpu" | "cuda" => Err(DeviceError::NeedsTch(t.to_owned())),
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
    // burn-tch is deprecated in favour of CubeCL backends that cannot be built here (their
    // build script downloads an LLVM bundle from outside the package registries); it is the only
    // GPU path this project has.
    #[allow(deprecated)]
    pub fn devices(self) -> (Device, Device) {
        let inference = match self {
            Self::Cpu => Device::flex(),
            #[cfg(feature = "tch")]
            Self::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            Self::Cuda(i) => Device::libtorch_cuda(i),
            #[cfg(feature = "tch")]
            Self::CudaLocalRank => Device::libtorch_cuda(0),
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
        let (_, device) = self.devices();
        chatpainter_embed::device::probe(&device).map_err(|message| DeviceError::Unusable {
            device: self.to_string(),
            message,
        })
    }

    /// The device of the data-parallel rank with this local index: `cuda` becomes
    /// `cuda:<local rank>`, every other choice stays as it is.
    pub fn for_local_rank(self, local_rank: usize) -> Self {
        match self {
            #[cfg(feature = "tch")]
            Self::CudaLocalRank => Self::Cuda(local_rank),
            other => {
                let _ = local_rank;
                other
            }
        }
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
        assert!(matches!(
            "cpu, cpu".parse::<TrainDevice>(),
            Err(DeviceError::List(_))
        ));
        assert_eq!(TrainDevice::Cpu.for_local_rank(3), TrainDevice::Cpu);
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
        for s in ["tch-cpu", "cuda:0", "cuda:3", "cuda"] {
            let e = s.parse::<TrainDevice>().expect_err("refused");
            assert_eq!(e, DeviceError::NeedsTch(s.into()));
            let msg = e.to_string();
            assert!(
                msg.contains("--features tch") && msg.contains("--devices"),
                "{msg}"
            );
        }
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
            "cuda".parse::<TrainDevice>(),
            Ok(TrainDevice::CudaLocalRank)
        );
        assert_eq!(TrainDevice::CudaLocalRank.to_string(), "cuda");
        assert_eq!(
            TrainDevice::CudaLocalRank.for_local_rank(1),
            TrainDevice::Cuda(1)
        );
        TrainDevice::TchCpu.probe().expect("libtorch CPU works");
    }
}
