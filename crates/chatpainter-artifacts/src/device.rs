//! The one grammar of device names, used by every stage config (`[embed]`, `[stage1]`,
//! `[stage2]`, `[eval]` `device = …`), the command line and `cargo xtask run --devices`:
//!
//! - `cpu` (alias `flex`): Burn's flex CPU backend, in every build;
//! - `tch-cpu`: LibTorch on the CPU;
//! - `cuda:N`: LibTorch CUDA device N;
//! - `cuda`: the GPU of the data-parallel rank's local index (rank k of a machine binds to
//!   `cuda:k`; `cuda:0` without ranks).
//!
//! One process drives one device; data-parallel training starts one rank per device, so a list
//! is refused here with that advice (xtask's `--devices cpu,cpu` expands a list into ranks, one
//! name each). The names are only names: which of them this build can drive, and the Burn device
//! each maps to, is `chatpainter_model::device`'s business, so this grammar stays free of Burn
//! and xtask can use it.

use std::fmt;
use std::str::FromStr;

/// A device name. Serialised as its text form.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceName {
    /// Burn's flex CPU backend.
    #[default]
    Cpu,
    /// LibTorch on the CPU.
    TchCpu,
    /// LibTorch CUDA device with this index.
    Cuda(usize),
    /// LibTorch CUDA device of the rank's local index ([`DeviceName::for_local_rank`]).
    CudaLocalRank,
}

/// A text that is not a device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceNameError {
    /// Not one of the known forms.
    #[error("device `{0}`: unknown (known: cpu, tch-cpu, cuda:N, cuda)")]
    Unknown(String),
    /// A comma-separated list: one process trains on one device.
    #[error(
        "device `{0}`: one process trains on one device; for data-parallel training start one \
         rank per device (`mpirun -n 2 chatpainter train …` with device `cpu` or `cuda`, or \
         `cargo xtask run … --devices {0}`)"
    )]
    List(String),
}

impl DeviceName {
    /// Whether the device runs on LibTorch (needs a `tch` build and libtorch).
    pub fn is_libtorch(self) -> bool {
        !matches!(self, Self::Cpu)
    }

    /// Whether the device is a GPU (needs libtorch with CUDA).
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_) | Self::CudaLocalRank)
    }

    /// The device of the data-parallel rank with this local index: `cuda` becomes
    /// `cuda:<local rank>`, every other name stays as it is.
    pub fn for_local_rank(self, local_rank: usize) -> Self {
        match self {
            Self::CudaLocalRank => Self::Cuda(local_rank),
            other => other,
        }
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::TchCpu => f.write_str("tch-cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::CudaLocalRank => f.write_str("cuda"),
        }
    }
}

impl FromStr for DeviceName {
    type Err = DeviceNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.contains(',') {
            return Err(DeviceNameError::List(t.to_owned()));
        }
        match t {
            "cpu" | "flex" => Ok(Self::Cpu),
            "tch-cpu" => Ok(Self::TchCpu),
            "cuda" => Ok(Self::CudaLocalRank),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceNameError::Unknown(t.to_owned())),
        }
    }
}

impl TryFrom<String> for DeviceName {
    type Error = DeviceNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DeviceName> for String {
    fn from(d: DeviceName) -> Self {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for (text, name) in [
            ("cpu", DeviceName::Cpu),
            ("tch-cpu", DeviceName::TchCpu),
            ("cuda:3", DeviceName::Cuda(3)),
            ("cuda", DeviceName::CudaLocalRank),
        ] {
            assert_eq!(text.parse::<DeviceName>(), Ok(name));
            assert_eq!(name.to_string(), text);
        }
        assert_eq!("flex".parse::<DeviceName>(), Ok(DeviceName::Cpu));
        assert_eq!(
            serde_json::to_string(&DeviceName::Cpu).expect("ser"),
            "\"cpu\""
        );
        assert!(matches!(
            "cpu, cpu".parse::<DeviceName>(),
            Err(DeviceNameError::List(_))
        ));
        for bad in ["gpu", "cuda:x", "cuda:"] {
            assert!(matches!(
                bad.parse::<DeviceName>(),
                Err(DeviceNameError::Unknown(_))
            ));
        }
        assert_eq!(DeviceName::Cpu.for_local_rank(3), DeviceName::Cpu);
        assert_eq!(
            DeviceName::CudaLocalRank.for_local_rank(1),
            DeviceName::Cuda(1)
        );
    }
}
