//! `chatpainter`: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = chatpainter_cli::Cli::parse();
    match chatpainter_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Stopped by Ctrl-C / SIGTERM after its checkpoint: one line, and the shell's code for
        // SIGINT (128 + 2), as torchrun and most tools exit.
        Err(e) if e.is::<chatpainter_cli::commands::train::Interrupted>() => {
            eprintln!("{e}");
            std::process::ExitCode::from(130)
        }
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", chatpainter_artifacts::display::error_chain(e));
            std::process::ExitCode::FAILURE
        }
    }
}
