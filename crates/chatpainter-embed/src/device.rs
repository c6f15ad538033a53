//! Where the Burn encoders (MiniLM, Skip-Thought) run: `[embed] device = "cpu" | "tch-cpu" |
//! "cuda:N"`, the same words as the training devices.
//!
//! `cpu` is Burn's flex backend, always built. The LibTorch devices need the `tch` cargo feature;
//! a build without it refuses them when the text is parsed, with the advice to build with it, so
//! no later code meets a device this binary cannot drive. The device is deliberately not part of
//! an encoder's identity: the same weights give the same vectors on every device (up to float
//! rounding), so the embedding cache is shared across devices.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::EmbedError;

/// The device an embed run encodes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EmbedDevice {
    /// Burn's flex CPU backend.
    #[default]
    Cpu,
    /// LibTorch on the CPU (`tch` builds only).
    #[cfg(feature = "tch")]
    TchCpu,
    /// LibTorch on GPU `N` (`tch` builds only).
    #[cfg(feature = "tch")]
    Cuda(usize),
}

impl EmbedDevice {
    /// The Burn device.
    // burn-tch is deprecated in favour of CubeCL backends that this project cannot build; it
    // is the only GPU path there is.
    #[allow(deprecated)]
    pub fn burn_device(self) -> Device {
        match self {
            Self::Cpu => Device::flex(),
            #[cfg(feature = "tch")]
            Self::TchCpu => Device::libtorch(),
            #[cfg(feature = "tch")]
            Self::Cuda(i) => Device::libtorch_cuda(i),
        }
    }

    /// `true` for the default flex device (used to leave it out of written configs).
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu)
    }

    /// Checks that the device works here before any weights go to it (a `cuda:N` this machine
    /// lacks would otherwise panic inside LibTorch on first use).
    ///
    /// # Errors
    /// [`EmbedError::Config`] naming the device, with LibTorch's message.
    pub fn probe(self) -> Result<(), EmbedError> {
        if self.is_cpu() {
            // Flex has no failure mode to probe for; keep the global panic hook untouched.
            return Ok(());
        }
        probe(&self.burn_device()).map_err(|message| {
            EmbedError::Config(format!("device `{self}` is not usable here: {message}"))
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

impl fmt::Display for EmbedDevice {
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

impl FromStr for EmbedDevice {
    type Err = EmbedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let unknown = || {
            EmbedError::Config(format!(
                "device `{t}`: unknown (known: cpu, tch-cpu, cuda:N)"
            ))
        };
        #[cfg(not(feature = "tch"))]
        let needs_tch = || {
            EmbedError::Config(format!(
                "device `{t}` runs on LibTorch, which this build of chatpainter leaves out: build \
                 with `--features tch` (LIBTORCH set, as `cargo xtask` does for libtorch \
                 devices), or use `cpu`"
            ))
        };
        let cuda_index = t.strip_prefix("cuda:").map(|n| n.parse::<usize>());
        match (t, cuda_index) {
            ("cpu" | "flex", _) => Ok(Self::Cpu),
            #[cfg(feature = "tch")]
            ("tch-cpu", _) => Ok(Self::TchCpu),
            #[cfg(feature = "tch")]
            (_, Some(Ok(i))) => Ok(Self::Cuda(i)),
            #[cfg(not(feature = "tch"))]
            ("tch-cpu", _) | (_, Some(Ok(_))) => Err(needs_tch()),
            _ => Err(unknown()),
        }
    }
}

impl TryFrom<String> for EmbedDevice {
    type Error = EmbedError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<EmbedDevice> for String {
    fn from(d: EmbedDevice) -> Self {
        d.to_string()
    }
}

/// Devices `chatpainter bench embed` measures: `$CHATPAINTER_BENCH_DEVICES` (a comma-separated
/// list, e.g. `cpu,tch-cpu,cuda:0`) or flex plus, in `tch` builds, LibTorch CPU.
///
/// # Errors
/// A device in the list that this build does not know or cannot drive.
pub fn bench_devices() -> Result<Vec<EmbedDevice>, EmbedError> {
    if let Ok(list) = std::env::var("CHATPAINTER_BENCH_DEVICES") {
        let mut out = Vec::new();
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            let d: EmbedDevice = part
                .parse()
                .map_err(|e| EmbedError::Config(format!("CHATPAINTER_BENCH_DEVICES: {e}")))?;
            if !out.contains(&d) {
                out.push(d);
            }
        }
        return Ok(out);
    }
    #[cfg(feature = "tch")]
    {
        Ok(vec![EmbedDevice::Cpu, EmbedDevice::TchCpu])
    }
    #[cfg(not(feature = "tch"))]
    {
        Ok(vec![EmbedDevice::Cpu])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_training_grammar() {
        assert_eq!("cpu".parse::<EmbedDevice>().unwrap(), EmbedDevice::Cpu);
        assert_eq!(" flex ".parse::<EmbedDevice>().unwrap(), EmbedDevice::Cpu);
        let err = "gpu".parse::<EmbedDevice>().unwrap_err().to_string();
        assert!(err.contains("`gpu`") && err.contains("cuda:N"), "{err}");
        let err = "cuda:x".parse::<EmbedDevice>().unwrap_err().to_string();
        assert!(err.contains("unknown"), "{err}");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_devices_are_refused_without_tch() {
        for d in ["tch-cpu", "cuda:0", "cuda:3"] {
            let err = d.parse::<EmbedDevice>().unwrap_err().to_string();
            assert!(err.contains("--features tch") && err.contains(d), "{err}");
        }
    }

    #[cfg(feature = "tch")]
    #[test]
    fn libtorch_devices_parse_with_tch() {
        assert_eq!(
            "tch-cpu".parse::<EmbedDevice>().unwrap(),
            EmbedDevice::TchCpu
        );
        assert_eq!(
            "cuda:1".parse::<EmbedDevice>().unwrap(),
            EmbedDevice::Cuda(1)
        );
        assert_eq!(EmbedDevice::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn flex_passes_its_probe() {
        assert!(EmbedDevice::Cpu.probe().is_ok());
        assert_eq!(probe(&Device::flex()), Ok(()));
    }

    #[test]
    fn round_trips_through_serde() {
        #[derive(Serialize, Deserialize)]
        struct T {
            device: EmbedDevice,
        }
        let t: T = serde_json::from_str(r#"{"device": "cpu"}"#).unwrap();
        assert_eq!(t.device, EmbedDevice::Cpu);
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"device":"cpu"}"#);
        let err = serde_json::from_str::<T>(r#"{"device": "tpu"}"#)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("tpu"), "{err}");
    }
}
