//! One module per group of subcommands.

pub mod batch;
pub mod fleet;
pub mod submit;
pub mod tasks;
pub mod top;

use anyhow::Result;
use serde::Serialize;

use crate::api::{Api, Events};
use crate::cli::FollowBy;

/// How a command that ran to its end went.
pub enum Outcome {
    Ok,
    /// A task the command waited for failed or was cancelled (exit status 3).
    TaskFailed(String),
}

pub fn json_out<T: Serialize>(value: &T) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, value)?;
    writeln!(stdout)?;
    Ok(())
}

/// The event stream when following by events.
pub async fn open_events(api: &Api, by: FollowBy) -> Result<Option<Events>> {
    Ok(match by {
        FollowBy::Events => Some(api.events().await?),
        FollowBy::Poll => None,
    })
}
