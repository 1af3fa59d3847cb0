use clap::Parser;
use ziya_visual::cli::{run_ask, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Ask(args)) => run_ask(args),
        None => {
            eprintln!("the window is not available in this build yet; use `ziya-visual ask --help`");
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
