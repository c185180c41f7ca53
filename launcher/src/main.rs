use clap::Parser;
use launcher::LocalArgs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match launcher::run(LocalArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("launcher: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
