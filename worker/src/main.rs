use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    serve::logging::init();
    let config = worker::config::Config::parse();
    match worker::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
