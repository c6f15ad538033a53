//! Data-parallel ranks: one process per device, each holding a full replica of the networks,
//! gradients averaged across processes before every optimiser step (the design of PyTorch DDP).
//!
//! Ranks are started by Open MPI's `mpirun` (or Slurm's `srun`); this module never launches
//! processes. A process started without an MPI launcher is a world of one rank and trains
//! exactly as before. With the `mpi` cargo feature the collectives are Open MPI's, through the
//! `mpi` crate (rsmpi): broadcast for rank 0's state, all-reduce (sum) on host buffers for
//! gradients and logged losses. A build without the feature refuses a world of several ranks.
//!
//! Rank identity comes from MPI itself (`MPI_Comm_rank`, and the local rank from a shared-memory
//! split of the world communicator), not from parsing launcher variables; those variables only
//! say whether a launcher is present at all.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::TrainError;

/// Environment variables through which Open MPI (`OMPI_…`), PMIx-based launchers (`PMIX_RANK`,
/// Slurm's `srun --mpi=pmix`) and PMI-1/2 launchers (`PMI_RANK`) announce a rank.
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"];

/// The element types the collectives reduce (`f32` gradients, `f64` losses and flags).
#[cfg(feature = "mpi")]
pub trait Number: Copy + mpi::datatype::Equivalence {}
/// The element types the collectives reduce (`f32` gradients, `f64` losses and flags).
#[cfg(not(feature = "mpi"))]
pub trait Number: Copy {}
impl Number for f32 {}
impl Number for f64 {}

/// This process's place among the data-parallel ranks.
pub struct World {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    #[cfg(feature = "mpi")]
    mpi: Option<Mpi>,
}

#[cfg(feature = "mpi")]
struct Mpi {
    world: mpi::topology::SimpleCommunicator,
    // Finalises MPI when dropped: declared last so the communicator goes first.
    _universe: mpi::environment::Universe,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rank {}/{} (local {}/{})",
            self.rank, self.size, self.local_rank, self.local_size
        )
    }
}

impl World {
    /// A world of one rank: no collectives, every operation is the identity.
    pub fn single() -> Self {
        Self {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// Whether an MPI launcher started this process.
    pub fn launched() -> bool {
        LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some())
    }

    /// The world this process belongs to: MPI's when an MPI launcher started it, else
    /// [`World::single`]. Call once, from the main thread, before any training (MPI can be
    /// initialised once per process).
    ///
    /// With several ranks on one machine, the CPU thread pool of the flex backend is sized to
    /// this rank's share of the cores (unless `RAYON_NUM_THREADS` says otherwise), so that the
    /// ranks do not fight over them; LibTorch's pool follows `OMP_NUM_THREADS`, which the
    /// launcher should set (`mpirun -x OMP_NUM_THREADS=…`).
    ///
    /// # Errors
    /// [`TrainError::Config`] when a launcher asks for several ranks and this build has no MPI,
    /// or when MPI cannot be initialised.
    pub fn from_launcher() -> Result<Self, TrainError> {
        if !Self::launched() {
            return Ok(Self::single());
        }
        let world = Self::init_mpi()?;
        if world.local_size > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = (cores / world.local_size).max(1);
            // Fails only when the pool already exists (a second world in one process): keep it.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build_global();
        }
        Ok(world)
    }

    #[cfg(feature = "mpi")]
    fn init_mpi() -> Result<Self, TrainError> {
        use mpi::traits::Communicator;
        let universe = mpi::initialize().ok_or_else(|| {
            TrainError::Config("MPI was already initialised in this process".into())
        })?;
        let world = universe.world();
        let local = world.split_shared(world.rank());
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            mpi: Some(Mpi {
                world,
                _universe: universe,
            }),
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn init_mpi() -> Result<Self, TrainError> {
        let size = std::env::var("OMPI_COMM_WORLD_SIZE")
            .ok()
            .or_else(|| std::env::var("SLURM_NTASKS").ok())
            .and_then(|s| s.parse::<usize>().ok());
        match size {
            Some(1) => Ok(Self::single()),
            _ => Err(TrainError::Config(
                "device: started by an MPI launcher, but this build of chatpainter has no MPI \
                 support: build with `--features mpi` (needs Open MPI and libclang), or let \
                 `cargo xtask run … --devices cpu,cpu` build and launch it"
                    .into(),
            )),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The rank's index among the ranks on its machine: the GPU it binds to.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0: the only one that writes files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Rank 0's `bytes` on every rank (the other ranks' argument is ignored).
    pub fn broadcast_bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::traits::{Communicator, Root};
            let root = m.world.process_at_rank(0);
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            let mut buffer = if self.is_root() {
                bytes
            } else {
                vec![0u8; len as usize]
            };
            root.broadcast_into(&mut buffer[..]);
            return buffer;
        }
        bytes
    }

    /// Element-wise sum over the ranks, in place.
    pub fn sum<T: Number>(&self, values: &mut [T]) {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi {
            use mpi::collective::SystemOperation;
            use mpi::traits::CommunicatorCollectives;
            let send = values.to_vec();
            m.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
        }
        let _ = values;
    }

    /// Element-wise mean over the ranks, in place.
    pub fn mean_f64(&self, values: &mut [f64]) {
        if self.size > 1 {
            self.sum(values);
            for v in values.iter_mut() {
                *v /= self.size as f64;
            }
        }
    }

    /// Whether `flag` is set on any rank.
    pub fn any(&self, flag: bool) -> bool {
        let mut v = [f64::from(u8::from(flag))];
        self.sum(&mut v);
        v[0] > 0.0
    }

    /// Ends every rank of the job at once (`MPI_Abort`): a rank that failed must not leave the
    /// others waiting forever in their next collective.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if let Some(m) = &self.mpi
            && self.size > 1
        {
            use mpi::traits::Communicator;
            m.world.abort(code);
        }
        std::process::exit(code)
    }

    /// Averages `grads` (this rank's gradients of `module`) over the ranks: one all-reduce of all
    /// of them packed into a single host buffer (device memory → host → MPI → device).
    pub fn average_gradients<M: Module>(
        &self,
        grads: GradientsParams,
        module: &M,
    ) -> GradientsParams {
        if self.size == 1 {
            return grads;
        }
        let mut pack = Pack {
            grads,
            flat: Vec::new(),
            parts: Vec::new(),
        };
        module.visit(&mut pack);
        let Pack {
            mut grads,
            mut flat,
            parts,
        } = pack;
        self.sum(&mut flat);
        let scale = 1.0 / self.size as f32;
        for v in &mut flat {
            *v *= scale;
        }
        let mut unpack = Unpack {
            grads: &mut grads,
            flat: &flat,
            parts: parts.into_iter(),
            offset: 0,
        };
        module.visit(&mut unpack);
        grads
    }
}

/// One gradient's place in the packed buffer.
struct Part {
    id: ParamId,
    shape: Vec<usize>,
    device: Device,
}

/// Moves every gradient of a module, in visiting order, into one flat host buffer.
struct Pack {
    grads: GradientsParams,
    flat: Vec<f32>,
    parts: Vec<Part>,
}

impl ModuleVisitor for Pack {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let device = g.device();
            let data = g.into_data();
            self.parts.push(Part {
                id: param.id,
                shape: data.shape().to_vec(),
                device,
            });
            self.flat.extend(data.iter::<f32>());
        }
    }
}

/// Puts the averaged gradients back, in the same visiting order.
struct Unpack<'a> {
    grads: &'a mut GradientsParams,
    flat: &'a [f32],
    parts: std::vec::IntoIter<Part>,
    offset: usize,
}

impl ModuleVisitor for Unpack<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // Every rank visits the same module in the same order; a parameter without a gradient
        // was skipped by `Pack` and is skipped here.
        let Some(part) = self.parts.as_slice().first() else {
            return;
        };
        if part.id != param.id {
            return;
        }
        let Some(part) = self.parts.next() else {
            return;
        };
        let n: usize = part.shape.iter().product();
        let values = self.flat[self.offset..self.offset + n].to_vec();
        self.offset += n;
        let tensor = Tensor::<D>::from_data(TensorData::new(values, part.shape), &part.device);
        self.grads.register::<D>(part.id, tensor);
    }
}
