//! The training loader: the epoch order, a bounded cache of blocks read from a [`TrainSource`],
//! and a background producer that prepares the next batches while the step runs.
//!
//! **Order.** Each epoch's order is drawn from the data stream as before: when the whole set
//! fits in one *shuffle window* (every smoke and test set), the new order is a Fisher–Yates
//! shuffle of the previous one, exactly as the in-memory trainer always did. A larger set is
//! shuffled in two levels, so that any stretch of consecutive batches touches only a window's
//! worth of blocks: the block order is shuffled, cut greedily into windows of at most
//! [`WINDOW_BYTES`] estimated resident bytes (at least one block each), and the items of each
//! window (taken in the previous epoch's order) are shuffled within it. Consecutive windows
//! follow each other, so batches may straddle two windows.
//!
//! **Memory.** The cache keeps blocks up to a capacity in bytes, evicting the least recently
//! used block that the batch being built does not need. With the windowed order a batch needs
//! blocks of at most two windows, so the bytes held stay below about two windows plus a block,
//! whatever the data set's size; [`BlockCache::peak_bytes`] counts them (tests assert the bound).
//!
//! **Prefetch.** [`Prefetcher`] runs the whole per-step data work on a background thread: the
//! epoch reshuffle, the random draws of the global batch (crops, flips, captions, noise, CA
//! eps; one stream each, in the same order as before), reading blocks and assembling this rank's
//! rows (pixel work in parallel on the rayon pool). Batches arrive through a bounded queue in
//! step order, so what a step sees never depends on thread count or timing. Each batch carries
//! the data cursor *after* it, which the trainer adopts when it consumes the batch: a checkpoint
//! counts batches the step used, never batches merely prefetched.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::TrainError;
use crate::objects::ObjectTargets;
use crate::source::{TrainSource, item_bytes};
use chatpainter_artifacts::Xoshiro256;
use chatpainter_model::TextStats;
use chatpainter_model::Variant;
use chatpainter_model::dataset::{Augment, BatchShape, HostBatch, TrainItem, assemble_items};

/// Resident-byte budget of one shuffle window. At COCO scale with 4800-d Skip-Thought per-turn
/// vectors (≈ 210 KB an image for the recurrent variant) a window holds ≈ 1,900 images; with
/// whole-dialogue vectors ≈ 8,000. The cache holds at most about two windows.
pub const WINDOW_BYTES: usize = 384 << 20;

/// Batches prepared ahead of the step.
pub const PREFETCH_BATCHES: usize = 3;

/// The block structure of a source and the epoch shuffle over it.
#[derive(Debug, Clone)]
pub struct Layout {
    /// First item of each block (blocks are consecutive ranges).
    starts: Vec<usize>,
    /// Estimated resident bytes of each block.
    block_bytes: Vec<usize>,
    window_bytes: usize,
}

impl Layout {
    /// The blocks of `source` with their estimated resident bytes: the stored picture at its
    /// decoded size (a PNG is smaller) plus the variant's vectors, from the item counts.
    pub fn new(source: &dyn TrainSource, variant: Variant, window_bytes: usize) -> Self {
        let w = source.widths();
        let picture = source.geometry().stored_bytes();
        let blocks = source.blocks();
        let block_bytes = blocks
            .iter()
            .map(|r| {
                r.clone()
                    .map(|i| {
                        let m = source.meta(i);
                        let floats = m.captions * w.caption
                            + match variant {
                                Variant::Stackgan => 0,
                                Variant::ChatpainterNonrecurrent => w.dialogue,
                                Variant::ChatpainterRecurrent => m.turns * w.turn,
                            };
                        picture + floats * std::mem::size_of::<f32>()
                    })
                    .sum()
            })
            .collect();
        Self {
            starts: blocks.iter().map(|r| r.start).collect(),
            block_bytes,
            window_bytes,
        }
    }

    /// The block holding `item`.
    pub fn block_of(&self, item: usize) -> usize {
        self.starts.partition_point(|&s| s <= item) - 1
    }

    /// Whether the whole set is one shuffle window (then the order is a plain shuffle).
    pub fn single_window(&self) -> bool {
        self.block_bytes.len() <= 1 || self.block_bytes.iter().sum::<usize>() <= self.window_bytes
    }

    /// The next epoch's order from the previous one (see the module docs).
    pub fn shuffle(&self, order: &mut Vec<u32>, rng: &mut Xoshiro256) {
        if self.single_window() {
            rng.shuffle(order);
            return;
        }
        let mut blocks: Vec<usize> = (0..self.block_bytes.len()).collect();
        rng.shuffle(&mut blocks);
        let mut window_of = vec![0usize; blocks.len()];
        let (mut window, mut filled) = (0usize, 0usize);
        for &b in &blocks {
            if filled > 0 && filled + self.block_bytes[b] > self.window_bytes {
                window += 1;
                filled = 0;
            }
            window_of[b] = window;
            filled += self.block_bytes[b];
        }
        let mut windows: Vec<Vec<u32>> = vec![Vec::new(); window + 1];
        for &i in order.iter() {
            windows[window_of[self.block_of(i as usize)]].push(i);
        }
        for w in &mut windows {
            rng.shuffle(w);
        }
        *order = windows.concat();
    }
}

/// A block in memory.
struct LoadedBlock {
    first: usize,
    items: Vec<TrainItem>,
    bytes: usize,
}

/// Blocks read from a source, kept up to a capacity in bytes (least recently used evicted first,
/// never one the batch being built needs).
pub struct BlockCache<'a> {
    source: &'a dyn TrainSource,
    layout: Layout,
    capacity: usize,
    blocks: HashMap<usize, (Arc<LoadedBlock>, u64)>,
    clock: u64,
    held: usize,
    peak: usize,
}

impl<'a> BlockCache<'a> {
    pub fn new(source: &'a dyn TrainSource, layout: Layout, capacity: usize) -> Self {
        Self {
            source,
            layout,
            capacity,
            blocks: HashMap::new(),
            clock: 0,
            held: 0,
            peak: 0,
        }
    }

    /// Bytes of items held now.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Most bytes of items held at once so far.
    pub fn peak_bytes(&self) -> usize {
        self.peak
    }

    /// The block structure the cache reads by.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The batch of `indices` with augmentations `augs`, reading the blocks it needs.
    ///
    /// # Errors
    /// Read and decode failures of the source.
    pub fn batch(
        &mut self,
        indices: &[usize],
        augs: &[Augment],
        shape: BatchShape,
        variant: Variant,
    ) -> Result<HostBatch, TrainError> {
        let mut needed: Vec<usize> = indices.iter().map(|&i| self.layout.block_of(i)).collect();
        needed.sort_unstable();
        needed.dedup();
        self.clock += 1;
        let mut held: HashMap<usize, Arc<LoadedBlock>> = HashMap::new();
        for &b in &needed {
            let block = match self.blocks.get_mut(&b) {
                Some((block, used)) => {
                    *used = self.clock;
                    block.clone()
                }
                None => {
                    let items = self.source.read_block(b)?;
                    let bytes = items.iter().map(item_bytes).sum();
                    let first = self.layout.starts[b];
                    let block = Arc::new(LoadedBlock {
                        first,
                        items,
                        bytes,
                    });
                    self.held += bytes;
                    self.peak = self.peak.max(self.held);
                    self.blocks.insert(b, (block.clone(), self.clock));
                    self.evict(&needed);
                    block
                }
            };
            held.insert(b, block);
        }
        let items: Vec<&TrainItem> = indices
            .iter()
            .map(|&i| {
                let block = &held[&self.layout.block_of(i)];
                &block.items[i - block.first]
            })
            .collect();
        Ok(assemble_items(&items, shape, variant, augs)?)
    }

    /// Drops least recently used blocks not in `needed` until under capacity.
    fn evict(&mut self, needed: &[usize]) {
        while self.held > self.capacity {
            let victim = self
                .blocks
                .iter()
                .filter(|(b, _)| needed.binary_search(b).is_err())
                .min_by_key(|(b, (_, used))| (*used, **b))
                .map(|(b, _)| *b);
            let Some(b) = victim else { return };
            if let Some((block, _)) = self.blocks.remove(&b) {
                self.held -= block.bytes;
            }
        }
    }
}

/// Where the data streams stand: after a checkpointed step, or after a prepared batch.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub epoch: u64,
    /// Batches of `permutation` used in this epoch.
    pub next_batch: usize,
    pub permutation: Arc<Vec<u32>>,
    pub data_rng: Xoshiro256,
    pub noise_rng: Xoshiro256,
}

/// One step's host inputs and the cursor after them.
pub struct Prepared {
    /// The epoch this batch belongs to.
    pub epoch: u64,
    pub after: Cursor,
    pub host: HostBatch,
    /// This rank's rows of G's noise.
    pub noise: Vec<f32>,
    /// This rank's rows of each CA eps draw.
    pub eps: Vec<Vec<f32>>,
    /// With the object loss on: this rank's `[rows, C, 4, 4]` object targets, from each real
    /// image's boxes as its crop and flip moved them.
    pub objects: Option<Vec<f32>>,
}

/// What the producer needs to know of the run.
#[derive(Clone)]
pub struct Plan<'a> {
    pub source: &'a dyn TrainSource,
    pub variant: Variant,
    pub text_stats: Option<&'a TextStats>,
    pub batch: usize,
    /// This rank's rows of the global batch.
    pub rows: Range<usize>,
    pub steps_per_epoch: u64,
    pub flip: bool,
    pub z_dim: usize,
    pub cond_dim: usize,
    pub ca_draws: usize,
    pub window_bytes: usize,
    /// The object loss's boxes (`None`: the loss is off).
    pub objects: Option<&'a ObjectTargets>,
}

impl Plan<'_> {
    fn shape(&self) -> BatchShape {
        let w = self.source.widths();
        BatchShape {
            geometry: self.source.geometry(),
            dialogue_dim: w.dialogue,
            turn_dim: w.turn,
            max_turns: self.source.max_turns(),
        }
    }

    /// Prepares the batch after `cursor` and advances it.
    fn prepare(
        &self,
        cursor: &mut Cursor,
        cache: &mut BlockCache<'_>,
        shape: BatchShape,
    ) -> Result<Prepared, TrainError> {
        if cursor.next_batch as u64 >= self.steps_per_epoch {
            cursor.epoch += 1;
            cursor.next_batch = 0;
            let mut order = cursor.permutation.as_ref().clone();
            cache.layout().shuffle(&mut order, &mut cursor.data_rng);
            cursor.permutation = Arc::new(order);
        }
        let start = cursor.next_batch * self.batch;
        let indices: Vec<usize> = cursor.permutation[start..start + self.batch]
            .iter()
            .map(|&i| i as usize)
            .collect();
        let augs: Vec<Augment> = indices
            .iter()
            .map(|&i| {
                Augment::draw(
                    &mut cursor.data_rng,
                    self.source.meta(i).captions,
                    shape.geometry,
                    self.flip,
                )
            })
            .collect();
        let rows = self.rows.clone();
        let mut host = cache.batch(
            &indices[rows.clone()],
            &augs[rows.clone()],
            shape,
            self.variant,
        )?;
        if let Some(stats) = self.text_stats {
            stats.apply_batch(&mut host);
        }
        let objects = self.objects.map(|targets| {
            indices[rows.clone()]
                .iter()
                .zip(&augs[rows.clone()])
                .flat_map(|(&i, &a)| targets.grid(self.source.meta(i).image_id, a, shape.geometry))
                .collect()
        });
        let share = |v: Vec<f32>, width: usize| v[rows.start * width..rows.end * width].to_vec();
        let noise = share(
            cursor.noise_rng.normals(self.batch * self.z_dim),
            self.z_dim,
        );
        let eps = (0..self.ca_draws)
            .map(|_| {
                share(
                    cursor.noise_rng.normals(self.batch * self.cond_dim),
                    self.cond_dim,
                )
            })
            .collect();
        cursor.next_batch += 1;
        Ok(Prepared {
            epoch: cursor.epoch,
            after: cursor.clone(),
            host,
            noise,
            eps,
            objects,
        })
    }
}

/// The background producer of a session's batches (see the module docs).
pub struct Prefetcher {
    receiver: Receiver<Result<Prepared, TrainError>>,
}

impl Prefetcher {
    /// Starts preparing `steps` batches after `cursor` on a thread of `scope`.
    pub fn spawn<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        plan: Plan<'env>,
        cursor: Cursor,
        steps: u64,
    ) -> Self {
        let (sender, receiver) = sync_channel(PREFETCH_BATCHES);
        scope.spawn(move || produce(&plan, cursor, steps, &sender));
        Self { receiver }
    }

    /// The next step's batch.
    ///
    /// # Errors
    /// The producer's error, or [`TrainError::Internal`] when it ended early.
    pub fn next(&self) -> Result<Prepared, TrainError> {
        self.receiver.recv().map_err(|_| {
            TrainError::Internal("the batch producer stopped before the run's last step".into())
        })?
    }
}

fn produce(
    plan: &Plan<'_>,
    mut cursor: Cursor,
    steps: u64,
    sender: &SyncSender<Result<Prepared, TrainError>>,
) {
    let shape = plan.shape();
    let layout = Layout::new(plan.source, plan.variant, plan.window_bytes);
    let mut cache = BlockCache::new(plan.source, layout, plan.window_bytes);
    for _ in 0..steps {
        let prepared = plan.prepare(&mut cursor, &mut cache, shape);
        let failed = prepared.is_err();
        // A closed queue means the run stopped: nothing more to do.
        if sender.send(prepared).is_err() || failed {
            return;
        }
    }
}

/// The centre-cropped batch of the first `count` items (sample sheets), read through a
/// temporary cache.
///
/// # Errors
/// Read and decode failures of the source.
pub fn first_items_batch(
    source: &dyn TrainSource,
    variant: Variant,
    count: usize,
) -> Result<HostBatch, TrainError> {
    let w = source.widths();
    let shape = BatchShape {
        geometry: source.geometry(),
        dialogue_dim: w.dialogue,
        turn_dim: w.turn,
        max_turns: source.max_turns(),
    };
    let layout = Layout::new(source, variant, WINDOW_BYTES);
    let mut cache = BlockCache::new(source, layout, 0);
    let indices: Vec<usize> = (0..count).collect();
    let augs = vec![Augment::center(shape.geometry); count];
    cache.batch(&indices, &augs, shape, variant)
}
