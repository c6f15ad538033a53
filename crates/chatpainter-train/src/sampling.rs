//! Sample sheets (`samples/step-….png`): real | (Stage-I image, in Stage-II) | generated, for a
//! fixed set of conditions, noise and CA eps drawn from the seed's own stream, never from the
//! training streams, so sampling does not change the training run.

use std::path::Path;

use burn::tensor::{Device, Tensor};

use crate::TrainError;
use crate::batch::DeviceBatch;
use crate::checkpoint;
use crate::config::TrainConfig;
use crate::loader::first_items_batch;
use crate::metrics::{SAMPLES_DIR, SheetColumn, sample_sheet_png};
use crate::source::TrainSource;
use crate::step::tensor2;
use crate::trainer::STREAM_SAMPLES;
use chatpainter_artifacts::Xoshiro256;
use chatpainter_model::TextStats;
use chatpainter_model::dataset::HostBatch;
use chatpainter_model::networks::StageGenerator;
use chatpainter_model::{ResolvedNetwork, Variant};

/// Fixed conditions, noise and CA eps for sample sheets (derived from the seed, never from the
/// training streams, so sampling does not change the training run).
pub(crate) struct Sampler {
    count: usize,
    real: Vec<f32>,
    host: HostBatch,
    noise: Vec<f32>,
    eps: Vec<Vec<f32>>,
    variant: Variant,
    net: ResolvedNetwork,
}

impl Sampler {
    pub(crate) fn new<G: StageGenerator>(
        cfg: &TrainConfig,
        data: &dyn TrainSource,
        net: &ResolvedNetwork,
        text_stats: Option<&TextStats>,
    ) -> Result<Self, TrainError> {
        let count = cfg.sample_count.clamp(1, data.len());
        let mut host = first_items_batch(data, cfg.variant, count)?;
        if let Some(stats) = text_stats {
            stats.apply_batch(&mut host);
        }
        let mut rng = Xoshiro256::new(cfg.seed, STREAM_SAMPLES);
        Ok(Self {
            count,
            real: host.images.clone(),
            noise: rng.normals(count * net.z_dim),
            eps: (0..G::CA_DRAWS)
                .map(|_| rng.normals(count * net.cond_dim))
                .collect(),
            host,
            variant: cfg.variant,
            net: *net,
        })
    }

    /// G on the fixed inputs, its BatchNorms normalising with the sheet's own batch statistics
    /// (as the reference, which draws sheets in train mode; the running statistics are neither
    /// used nor changed): real | (Stage-I image, in Stage-II) | generated.
    pub(crate) fn write<G: StageGenerator>(
        &self,
        gnet: &G,
        out_dir: &Path,
        step: u64,
        device: &Device,
    ) -> Result<(), TrainError> {
        let g = gnet.valid();
        let n = self.count;
        let b = DeviceBatch::new(self.host.clone(), self.variant, &self.net, device);
        let noise = tensor2(self.noise.clone(), [n, self.net.z_dim], device);
        let eps = self
            .eps
            .iter()
            .map(|e| tensor2(e.clone(), [n, self.net.cond_dim], device))
            .collect();
        // Batch statistics, as the reference's train-mode sheets (running statistics untouched).
        let out = chatpainter_nn::blocks::with_batch_statistics(|| {
            g.generate(b.captions, &b.dialogue, noise, eps)
        })?;
        let host = |t: Tensor<4>| -> (usize, Vec<f32>) {
            (t.dims()[3], t.into_data().iter::<f32>().collect())
        };
        let crop = self.host.crop;
        let mut columns = vec![(crop, self.real.clone())];
        if let Some(s1) = out.stage1_img {
            columns.push(host(s1));
        }
        columns.push(host(out.fake));
        let views: Vec<SheetColumn<'_>> = columns
            .iter()
            .map(|(side, values)| SheetColumn {
                side: *side,
                values,
            })
            .collect();
        let png = sample_sheet_png(&views, n)?;
        let path = out_dir
            .join(SAMPLES_DIR)
            .join(format!("{}.png", checkpoint::dir_name(step)));
        chatpainter_artifacts::write_atomic(path, &png)?;
        Ok(())
    }
}
