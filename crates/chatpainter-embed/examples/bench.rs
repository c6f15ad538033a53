//! The embed benchmark without the CLI (same rows as `chatpainter bench embed`):
//! `cargo run -p chatpainter-embed --release --example bench [BATCH_SIZE BATCH_TOKENS]`,
//! the two numbers overriding MiniLM's batching (e.g. `32 100000` for fixed batches of 32).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut options = chatpainter_embed::bench::BenchOptions::default();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    if let [size, tokens, ..] = args[..] {
        options.batch_size = size;
        options.batch_tokens = tokens;
    }
    if let [_, _, images] = args[..] {
        options.rebuild_images = images;
    }
    for row in chatpainter_embed::bench::run(&options)? {
        println!("{}", serde_json::to_string(&row)?);
    }
    Ok(())
}
