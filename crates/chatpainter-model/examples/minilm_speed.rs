//! Rough MiniLM throughput on this machine: `cargo run -p chatpainter-model --example
//! minilm_speed [MODEL_DIR]`. Prints sentences/s for short turns (~10 tokens) and whole
//! 10-turn dialogues (~89 tokens) at batch sizes 32 and 1. Not a test: timings vary with
//! machine load.

use std::time::Instant;

use chatpainter_model::text::{MiniLmConfig, MiniLmEncoder, TextEncoder, dialogue_text};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| MiniLmConfig::from_default_dir().model_dir);
    // VisDial-like turns: ~10 word pieces each with [CLS]/[SEP], ~89 for the whole dialogue.
    let turns = [
        ("how many people are there", "two"),
        ("are they men or women", "one of each"),
        ("how old are they", "maybe about thirty years old"),
        ("what are they doing", "walking down the busy street"),
        ("is it sunny", "yes very"),
        ("can you see any cars", "a few parked ones on the left"),
        ("what color are the cars", "red and white"),
        ("are there buildings", "yes tall brick ones"),
        ("are there trees", "a couple"),
        ("any animals", "no animals"),
    ];
    let short: Vec<String> = (0..256)
        .map(|i| {
            let (q, a) = turns[i % turns.len()];
            format!("{} {i}", chatpainter_model::text::turn_text(q, a))
        })
        .collect();
    let dialogue = dialogue_text(&turns);
    let dialogues: Vec<String> = (0..128).map(|i| format!("{dialogue} {i}")).collect();

    for batch_size in [32, 1] {
        let mut config = MiniLmConfig::new(&dir);
        config.batch_size = batch_size;
        let encoder = MiniLmEncoder::load(&config)?;
        for (label, texts) in [("short turns", &short), ("dialogues", &dialogues)] {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            if batch_size == 32 {
                let lengths = encoder.token_lengths(&refs)?;
                let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
                println!("{label}: {mean:.1} word pieces on average");
            }
            let n = if batch_size == 1 {
                refs.len() / 4
            } else {
                refs.len()
            };
            // Warm-up (allocations, rayon pool).
            encoder.encode_batch(&refs[..batch_size.min(n)])?;
            let start = Instant::now();
            let cpu0 = cpu_seconds();
            encoder.encode_batch(&refs[..n])?;
            let secs = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            println!(
                "batch {batch_size:>2} {label:<12} {n:>4} texts: {:>8.1} texts/s, {:>6.2} ms/text wall, {:>6.2} ms/text CPU",
                n as f64 / secs,
                1000.0 * secs / n as f64,
                1000.0 * cpu / n as f64
            );
        }
    }
    Ok(())
}

/// User + system CPU seconds of this process (Linux `/proc/self/stat`, 100 ticks/s); 0
/// elsewhere. Shown next to wall time because the build machine is shared: CPU time per text
/// is what an idle machine would spread over its cores.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}
