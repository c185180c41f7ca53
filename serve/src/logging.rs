//! `tracing` set-up: human-readable by default, JSON with `LOG_FORMAT=json`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (ANSI colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging settings, shared by both binaries' command lines.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// What to log, as a tracing filter: `info`, `debug`, `planner=debug,info`...
    #[arg(long = "log", env = "LOG", default_value = "info")]
    pub filter: String,
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        ignore_case = true,
        default_value_t
    )]
    pub log_format: LogFormat,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start; what the process prints on stdout follows it too.
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

pub fn init(args: &LogArgs) {
    let _ = FORMAT.set(args.log_format);
    let filter = EnvFilter::try_new(&args.filter).unwrap_or_else(|err| {
        eprintln!(
            "LOG={:?} is not a valid filter ({err}); logging at info",
            args.filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
