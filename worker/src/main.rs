use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = worker::config::Config::parse();
    serve::logging::init(&config.log);
    match worker::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("worker: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
