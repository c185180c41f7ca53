use clap::Parser;
use planner::config::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    serve::logging::init(&cli.log);
    match planner::run(cli.serve).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("planner: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
