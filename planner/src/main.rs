use clap::Parser;
use planner::config::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Local(args)) => planner::local::run(args).await,
        Some(Command::Serve) | None => {
            serve::logging::init();
            planner::serve(cli.serve).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("planner: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
