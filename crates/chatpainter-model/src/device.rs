//! Which devices this build can drive, and the Burn device behind each name.
//!
//! The names (`cpu`, `tch-cpu`, `cuda:N`, `cuda`) are one grammar,
//! [`chatpainter_artifacts::device::DeviceName`], shared with xtask. A [`DeviceChoice`] is a name
//! this binary can drive: the LibTorch devices need the `tch` cargo feature, and a build without
//! it refuses them when the text is parsed (config, checkpoint state or command line) with a
//! [`DeviceError`] saying how to build with it, so no later code has to handle a device this
//! binary cannot drive. A `cuda:N` that this machine lacks shows up as a panic inside tch on first
//! use; [`DeviceChoice::probe`] turns that into an error, so call it before any work.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use chatpainter_artifacts::device::{DeviceName, DeviceNameError};

/// A device string that cannot be used by this build or on this machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not a device name, or a list of them.
    #[error(transparent)]
    Name(#[from] DeviceNameError),
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

/// A device this build can drive. Serialised as its name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceChoice(DeviceName);

impl DeviceChoice {
    /// Burn's flex CPU backend, in every build.
    pub const CPU: Self = Self(DeviceName::Cpu);
    /// LibTorch on the CPU (`tch` builds).
    #[cfg(feature = "tch")]
    pub const TCH_CPU: Self = Self(DeviceName::TchCpu);

    /// `name`, if this build can drive it.
    ///
    /// # Errors
    /// [`DeviceError::NeedsTch`] for a LibTorch device in a build without the `tch` feature.
    pub fn new(name: DeviceName) -> Result<Self, DeviceError> {
        if name.is_libtorch() && !cfg!(feature = "tch") {
            return Err(DeviceError::NeedsTch(name.to_string()));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn name(self) -> DeviceName {
        self.0
    }

    /// Whether this device runs on LibTorch.
    pub fn is_libtorch(self) -> bool {
        self.0.is_libtorch()
    }

    /// `true` for the default flex device (left out of written configs).
    pub fn is_cpu(&self) -> bool {
        self.0 == DeviceName::Cpu
    }

    /// The device of the data-parallel rank with this local index: `cuda` becomes
    /// `cuda:<local rank>`, every other choice stays as it is.
    pub fn for_local_rank(self, local_rank: usize) -> Self {
        Self(self.0.for_local_rank(local_rank))
    }

    /// `(training device with autodiff, inference device)`.
    ///
    /// For `cuda:N` on a machine without that GPU, tch panics on first use: call
    /// [`DeviceChoice::probe`] first.
    pub fn devices(self) -> (Device, Device) {
        let inference = self.burn_device();
        (inference.clone().autodiff(), inference)
    }

    /// The Burn device (inference, no autodiff).
    // burn-tch is deprecated in favour of CubeCL backends that cannot be built here (their build
    // script downloads an LLVM bundle from outside the package registries); it is the only GPU
    // path this project has.
    #[allow(deprecated)]
    pub fn burn_device(self) -> Device {
        match self.0 {
            DeviceName::Cpu => Device::flex(),
            #[cfg(feature = "tch")]
            DeviceName::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            DeviceName::Cuda(i) => Device::libtorch_cuda(i),
            #[cfg(feature = "tch")]
            DeviceName::CudaLocalRank => Device::libtorch_cuda(0),
            #[cfg(not(feature = "tch"))]
            DeviceName::TchCpu | DeviceName::Cuda(_) | DeviceName::CudaLocalRank => {
                unreachable!("DeviceChoice::new refuses LibTorch devices in builds without `tch`")
            }
        }
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
        probe(&self.burn_device()).map_err(|message| DeviceError::Unusable {
            device: self.to_string(),
            message,
        })
    }
}

/// Computes 1 + 1 on `device`. LibTorch reports a missing GPU or driver by panicking; this
/// returns its message instead (without the default hook printing a panic report first).
///
/// # Errors
/// The panic's message, or the wrong sum.
pub fn probe(device: &Device) -> Result<(), String> {
    let run =
        std::panic::AssertUnwindSafe(|| Tensor::<1>::ones([2], device).sum().into_scalar::<f32>());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let outcome = std::panic::catch_unwind(run);
    std::panic::set_hook(previous);
    match outcome {
        Ok(2.0) => Ok(()),
        Ok(v) => Err(format!("1 + 1 gave {v}")),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned())),
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.parse()?)
    }
}

impl TryFrom<String> for DeviceChoice {
    type Error = DeviceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> Self {
        d.to_string()
    }
}

/// Devices the benchmarks measure: `$CHATPAINTER_BENCH_DEVICES` (a comma-separated list, e.g.
/// `cpu,tch-cpu,cuda:0`) or flex plus, in `tch` builds, LibTorch CPU.
///
/// # Errors
/// A device in the list that this build does not know or cannot drive.
pub fn bench_devices() -> Result<Vec<DeviceChoice>, DeviceError> {
    let list = std::env::var("CHATPAINTER_BENCH_DEVICES").unwrap_or_else(|_| {
        if cfg!(feature = "tch") {
            "cpu,tch-cpu"
        } else {
            "cpu"
        }
        .into()
    });
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let d: DeviceChoice = part.parse()?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flex_parses_serialises_and_passes_its_probe() {
        assert_eq!("cpu".parse::<DeviceChoice>(), Ok(DeviceChoice::CPU));
        assert_eq!(" flex ".parse::<DeviceChoice>(), Ok(DeviceChoice::CPU));
        assert_eq!(
            serde_json::to_string(&DeviceChoice::CPU).expect("ser"),
            "\"cpu\""
        );
        assert!(matches!(
            "cpu,cpu".parse::<DeviceChoice>(),
            Err(DeviceError::Name(DeviceNameError::List(_)))
        ));
        let err = serde_json::from_str::<DeviceChoice>("\"tpu\"").expect_err("refused");
        assert!(err.to_string().contains("tpu"), "{err}");
        assert_eq!(DeviceChoice::CPU.for_local_rank(3), DeviceChoice::CPU);
        DeviceChoice::CPU.probe().expect("flex works");
        assert_eq!(probe(&Device::flex()), Ok(()));
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_need_the_feature() {
        for s in ["tch-cpu", "cuda:0", "cuda:3", "cuda"] {
            let e = s.parse::<DeviceChoice>().expect_err("refused");
            assert_eq!(e, DeviceError::NeedsTch(s.into()));
            let msg = e.to_string();
            assert!(
                msg.contains("--features tch") && msg.contains("--devices"),
                "{msg}"
            );
        }
        let e = serde_json::from_str::<DeviceChoice>("\"tch-cpu\"").expect_err("refused");
        assert!(e.to_string().contains("--features tch"), "{e}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn tch_devices_parse_with_the_feature() {
        let parse = |s: &str| s.parse::<DeviceChoice>().expect("parses");
        assert_eq!(parse("tch-cpu").name(), DeviceName::TchCpu);
        assert_eq!(parse("cuda:1").name(), DeviceName::Cuda(1));
        assert_eq!(parse("cuda:1").to_string(), "cuda:1");
        assert_eq!(parse("cuda").name(), DeviceName::CudaLocalRank);
        assert_eq!(parse("cuda").for_local_rank(1), parse("cuda:1"));
        parse("tch-cpu").probe().expect("libtorch CPU works");
    }
}
