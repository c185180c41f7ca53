//! `workers`: the planner's command-line client. Everything goes through the
//! planner's public HTTP API, the one curl uses.

mod api;
mod cli;
mod commands;
mod config;
mod follow;
mod render;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command, OpsAction};
use commands::Outcome;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::Error::from(err)),
    };
    match runtime.block_on(run(cli)) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::TaskFailed(message)) => {
            eprintln!("workers: {message}");
            ExitCode::from(3)
        }
        Err(err) => fail(&err),
    }
}

/// One readable line: the error and its causes.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("workers: error: {err:#}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let output = cli.global.output;
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "workers",
            &mut std::io::stdout(),
        );
        return Ok(Outcome::Ok);
    }
    let target = config::resolve(&cli.global, |key| std::env::var(key).ok())?;
    let api = api::Api::new(target.planner, target.token)?;
    match cli.command {
        Command::Submit(args) => commands::submit::run(&api, args, output).await,
        Command::Get { ids } => commands::tasks::get(&api, &ids, output).await,
        Command::Ls(args) => commands::tasks::list(&api, args, output).await,
        Command::Wait { ids, follow } => commands::tasks::wait(&api, &ids, follow, output).await,
        Command::Cancel(args) => commands::tasks::cancel(&api, args, output).await,
        Command::Batch(args) => commands::batch::run(&api, args, output).await,
        Command::Workers => commands::fleet::workers(&api, output).await,
        Command::Ops { action: None } => commands::fleet::ops(&api, output).await,
        Command::Ops {
            action:
                Some(OpsAction::Put {
                    name,
                    file,
                    timeout,
                }),
        } => commands::fleet::put(&api, &name, &file, timeout, output).await,
        Command::Top(args) => commands::top::run(&api, args, output).await,
        Command::Completions { .. } => Ok(Outcome::Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
