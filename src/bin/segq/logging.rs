//! Diagnostics on stderr through `tracing`: text lines by default, JSON
//! lines with `--log-format json` or `SEGQ_LOG_FORMAT=json`; the level
//! from `SEGQ_LOG`, else `RUST_LOG`, else `info`. Results a command prints
//! for its user go to stdout, not through here.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, with the current span's fields (a request's
    /// `request_id`).
    Json,
}

/// The format and the level filter from the flag and the environment
/// (`var` looks a variable up); an error names the variable at fault.
pub fn settings(
    flag: Option<Format>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(Format, EnvFilter), String> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    let format = match (flag, set("SEGQ_LOG_FORMAT")) {
        (Some(f), _) => f,
        (None, None) => Format::Text,
        (None, Some(v)) => Format::from_str(v.trim(), true).map_err(|_| {
            format!("environment variable SEGQ_LOG_FORMAT: expected text or json, got {v:?}")
        })?,
    };
    let (name, directives) = match (set("SEGQ_LOG"), set("RUST_LOG")) {
        (Some(v), _) => ("SEGQ_LOG", v),
        (None, Some(v)) => ("RUST_LOG", v),
        (None, None) => ("", "info".to_string()),
    };
    let filter = EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| format!("environment variable {name}: {directives:?}: {e}"))?;
    Ok((format, filter))
}

/// Installs the subscriber for the process.
pub fn init(flag: Option<Format>, var: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    let (format, filter) = settings(flag, var)?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        Format::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        Format::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    }
    .map_err(|e| format!("installing the log: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_flag_wins_then_segq_log_format() {
        let f = |flag, pairs: &[(&str, &str)]| settings(flag, &env(pairs)).map(|s| s.0);
        assert_eq!(f(None, &[]), Ok(Format::Text));
        assert_eq!(f(None, &[("SEGQ_LOG_FORMAT", "json")]), Ok(Format::Json));
        assert_eq!(f(None, &[("SEGQ_LOG_FORMAT", "JSON")]), Ok(Format::Json));
        assert_eq!(
            f(Some(Format::Text), &[("SEGQ_LOG_FORMAT", "json")]),
            Ok(Format::Text)
        );
        let e = f(None, &[("SEGQ_LOG_FORMAT", "xml")]).unwrap_err();
        assert!(e.contains("SEGQ_LOG_FORMAT") && e.contains("xml"), "{e}");
    }

    #[test]
    fn segq_log_wins_over_rust_log() {
        let level = |pairs: &[(&str, &str)]| {
            settings(None, &env(pairs)).map(|s| s.1.max_level_hint().map(|l| l.to_string()))
        };
        assert_eq!(level(&[]), Ok(Some("info".into())));
        assert_eq!(level(&[("RUST_LOG", "debug")]), Ok(Some("debug".into())));
        assert_eq!(
            level(&[("RUST_LOG", "debug"), ("SEGQ_LOG", "warn")]),
            Ok(Some("warn".into()))
        );
        let e = level(&[("SEGQ_LOG", "info,=[")]).unwrap_err();
        assert!(e.contains("SEGQ_LOG"), "{e}");
    }
}
