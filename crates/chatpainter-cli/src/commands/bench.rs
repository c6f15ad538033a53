//! `chatpainter bench <what>`: the stage benchmarks. Each prints one JSON [`BenchRow`] per line
//! on stdout; `cargo xtask bench` collects them into one table. Benchmarks measure, they never
//! assert: figures go into issue notes with the machine they ran on.

use anyhow::{Result, bail};
use chatpainter_artifacts::BenchRow;
use std::path::PathBuf;

/// `chatpainter bench <what>`: one JSON row per figure on stdout.
pub fn bench(what: &str) -> Result<()> {
    // Benchmarks report what they skip as tracing warnings: show them on stderr.
    crate::ui::init_logging(None)?;
    for row in run(what)? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}

/// `chatpainter bench-step`: prints the report's JSON line.
pub fn bench_step(args: &StepArgs) -> Result<()> {
    let report = chatpainter_bench::step::step_bench(&args.options()?)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `chatpainter bench-encode`: prints the JSON line of [`encode`].
pub fn bench_encode(args: &EncodeArgs) -> Result<()> {
    println!("{}", encode(args)?);
    Ok(())
}

/// Runs one benchmark by name.
pub fn run(what: &str) -> Result<Vec<BenchRow>> {
    match what {
        "embed" => Ok(chatpainter_embed::bench::run(
            &chatpainter_embed::bench::BenchOptions::default(),
        )?),
        // Stage-I step time per device (flex; LibTorch CPU in `tch` builds; or the devices in
        // $CHATPAINTER_BENCH_DEVICES), measured by the bench crate.
        "stage1" => {
            let devices = chatpainter_model::device::bench_devices()?;
            Ok(chatpainter_bench::gpu_check::bench_rows(&devices)?)
        }
        // Stage-II step time and peak memory at the paper's widths, batches 2 and 4 (more with
        // $CHATPAINTER_BENCH_BATCHES, e.g. "4,16,64" on a GPU).
        "stage2" => {
            let devices = chatpainter_model::device::bench_devices()?;
            let batches: Vec<usize> = match std::env::var("CHATPAINTER_BENCH_BATCHES") {
                Ok(list) => list
                    .split(',')
                    .map(|b| b.trim().parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("CHATPAINTER_BENCH_BATCHES={list:?}: {e}"))?,
                Err(_) => vec![2, 4],
            };
            Ok(chatpainter_bench::step::stage2_rows(&devices, &batches, 3)?)
        }
        // Training loader: images/s per core for each stage's batch preparation and the cores
        // that keep one and eight H200s fed.
        "loader" => Ok(chatpainter_bench::loader::loader_rows(3.0)?),
        "eval" => super::eval::bench(chatpainter_model::DeviceChoice::CPU),
        other => bail!("bench {other}: unknown benchmark"),
    }
}

/// `chatpainter bench-step`: one training step at any widths; the arguments and the JSON line
/// are those of `tests/reference/step_torch.py`, the PyTorch reference of the same step.
#[derive(Debug, clap::Args)]
pub struct StepArgs {
    /// 1 (64x64) or 2 (256x256 on a frozen Stage-I G).
    #[arg(long, default_value_t = 1)]
    pub stage: u8,
    /// stackgan, chatpainter-nonrecurrent or chatpainter-recurrent.
    #[arg(long, default_value = "stackgan")]
    pub variant: String,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Stage-I widths.
    #[arg(long, default_value_t = 32)]
    pub gf: usize,
    #[arg(long, default_value_t = 32)]
    pub df: usize,
    /// Stage-II widths and residual blocks.
    #[arg(long, default_value_t = 32)]
    pub s2_gf: usize,
    #[arg(long, default_value_t = 16)]
    pub s2_df: usize,
    #[arg(long, default_value_t = 2)]
    pub r_num: usize,
    #[arg(long, default_value_t = 1024)]
    pub caption_dim: usize,
    /// Whole-dialogue (non-recurrent) or per-turn (recurrent) vector width.
    #[arg(long, default_value_t = 4800)]
    pub dialogue_dim: usize,
    #[arg(long, default_value_t = 10)]
    pub turns: usize,
    #[arg(long, default_value_t = 1024)]
    pub rnn_hidden: usize,
    #[arg(long, default_value_t = 128)]
    pub cond_dim: usize,
    #[arg(long, default_value_t = 100)]
    pub z_dim: usize,
    /// cpu (flex), tch-cpu, cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32 or bf16 (mixed precision).
    #[arg(long, default_value = "f32")]
    pub precision: String,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl StepArgs {
    /// The benchmark these arguments describe.
    ///
    /// # Errors
    /// An unknown stage, variant, device or precision.
    pub fn options(&self) -> Result<chatpainter_bench::step::StepBenchOptions> {
        use chatpainter_bench::gpu_check::StepSetup;
        use chatpainter_model::Stage2Widths;
        let variant: chatpainter_model::Variant =
            serde_json::from_value(serde_json::Value::String(self.variant.clone())).map_err(
                |_| {
                    anyhow::anyhow!(
                        "--variant {}: unknown (known: stackgan, chatpainter-nonrecurrent, chatpainter-recurrent)",
                        self.variant
                    )
                },
            )?;
        let (dialogue_dim, rnn_hidden, turns) = match variant {
            chatpainter_model::Variant::Stackgan => (0, 0, 0),
            chatpainter_model::Variant::ChatpainterNonrecurrent => (self.dialogue_dim, 0, 0),
            chatpainter_model::Variant::ChatpainterRecurrent => {
                (self.dialogue_dim, self.rnn_hidden, self.turns)
            }
        };
        let mut setup = StepSetup::bench_reduced(self.batch);
        setup.name = "bench-step".into();
        setup.variant = variant;
        setup.turns = turns;
        setup.seed = self.seed;
        setup.net = chatpainter_model::ResolvedNetwork {
            z_dim: self.z_dim,
            caption_dim: self.caption_dim,
            dialogue_dim,
            rnn_hidden,
            cond_dim: self.cond_dim,
            gf_dim: self.gf,
            df_dim: self.df,
            stage2: None,
            object_classes: 0,
            ca_activation: chatpainter_model::CaActivation::Relu,
        };
        let stage2 = match self.stage {
            1 => None,
            2 => Some(Stage2Widths {
                gf_dim: self.s2_gf,
                df_dim: self.s2_df,
                r_num: self.r_num,
                // The reference: the frozen Stage-I G's BatchNorms stay in train mode.
                stage1_bn_batch_stats: true,
            }),
            other => bail!("--stage {other}: must be 1 or 2"),
        };
        Ok(chatpainter_bench::step::StepBenchOptions {
            setup,
            stage2,
            device: self.device.parse()?,
            precision: self.precision.parse()?,
            warmup: self.warmup,
            steps: self.steps,
        })
    }
}

/// `chatpainter bench-encode`: MiniLM on a fixed set of generated texts, timed per pass; the
/// texts can be written out so `tests/reference/minilm_transformers.py` encodes the same ones.
#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// short-turns or dialogues.
    #[arg(long, default_value = "short-turns")]
    pub kind: String,
    #[arg(long, default_value_t = 512)]
    pub count: usize,
    /// Timed passes over all the texts (after one untimed pass).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Write the texts here (a JSON array of strings).
    #[arg(long)]
    pub texts_out: Option<PathBuf>,
    /// Write the vectors here: little-endian float32, one 384-d row per text, in text order.
    #[arg(long)]
    pub vectors_out: Option<PathBuf>,
}

/// Times the encoder; returns the JSON line (the reference prints the same fields).
///
/// # Errors
/// An unknown kind; a missing MiniLM folder (`cargo xtask fetch-models`); write errors.
pub fn encode(args: &EncodeArgs) -> Result<serde_json::Value> {
    use chatpainter_model::text::TextEncoder;
    let texts =
        chatpainter_embed::bench::parity_texts(&args.kind, args.count).ok_or_else(|| {
            anyhow::anyhow!(
                "--kind {}: unknown (known: short-turns, dialogues)",
                args.kind
            )
        })?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    if let Some(path) = &args.texts_out {
        chatpainter_artifacts::write_atomic(path, &serde_json::to_vec(&texts)?)?;
    }
    let config = chatpainter_model::text::MiniLmConfig::from_default_dir();
    let encoder = chatpainter_model::text::MiniLmEncoder::load(&config)?;
    let lengths = encoder.token_lengths(&refs)?;
    let mut out = encoder.encode_batch(&refs)?;
    let mut pass_ms = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let t0 = std::time::Instant::now();
        out = encoder.encode_batch(&refs)?;
        pass_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    if let Some(path) = &args.vectors_out {
        let bytes: Vec<u8> = out.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        chatpainter_artifacts::write_atomic(path, &bytes)?;
    }
    let mut sorted = pass_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(serde_json::json!({
        "impl": "chatpainter",
        "device": "cpu",
        "threads": chatpainter_bench::step::intra_op_threads(chatpainter_model::DeviceChoice::CPU),
        "batch": config.batch_size,
        "batch_tokens": config.batch_tokens,
        "texts": texts.len(),
        "mean_word_pieces": lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64,
        "median_ms_per_text": median / texts.len().max(1) as f64,
        "pass_ms": pass_ms,
    }))
}
