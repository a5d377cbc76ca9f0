//! One log setup for the operator and the issuer: the same flag
//! (`--log-format`, env `SIGIL_LOG_FORMAT`), the same output (stderr) and
//! the same field names, so one collector config reads both. JSON lines
//! carry `timestamp`, `level`, `target`, `message` and the event's fields
//! at the top level (`client_id`, `result`, `latency_ms`, …).

use std::io::IsTerminal;

/// `--log-format`: `json` (one object per line) or `text` (for people).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// The env var of `--log-format` in both binaries.
pub const LOG_FORMAT_ENV: &str = "SIGIL_LOG_FORMAT";

/// Installs the global subscriber: level filter from `RUST_LOG` (default
/// `info`), lines to stderr.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for people, never in log files and collectors.
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal());
    match format {
        // Fields at the top level, not under "fields": the names a query
        // uses are the names in the code.
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
