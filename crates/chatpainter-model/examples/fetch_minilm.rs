//! Puts all-MiniLM-L6-v2 into a models folder: `cargo run -p chatpainter-model --example
//! fetch_minilm [DEST]` (default: `$CHATPAINTER_MODELS` or `data/models`). The real entry
//! point is `cargo xtask fetch-models`; this example exists so the crate can be exercised
//! on its own.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dest = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(chatpainter_model::text::default_models_dir);
    let dir = chatpainter_model::text::fetch_minilm(&dest)?;
    println!("{}", dir.display());
    Ok(())
}
