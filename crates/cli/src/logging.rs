//! Logs to stderr: human-readable with colour on a terminal, plain text
//! when piped (journald, a file), or one JSON object per line for log
//! shippers (`--log-format json`).

use std::io::IsTerminal;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Readable lines; colour only on a terminal (and never with `NO_COLOR`).
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, message, fields).
    Json,
}

/// Level filter from `RUST_LOG` (default `info`): connection events are
/// at info, each share at debug.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colour_wanted()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// <https://no-color.org>: any non-empty `NO_COLOR` turns colour off.
fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    !no_color && std::io::stderr().is_terminal()
}
