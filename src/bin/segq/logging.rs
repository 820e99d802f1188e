//! Diagnostics on stderr through `tracing`: text lines by default, JSON
//! lines with `--log-format json` or `SEGQ_LOG_FORMAT=json`; the level
//! from `SEGQ_LOG`, else `RUST_LOG`, else `info`. Results a command prints
//! for its user go to stdout, not through here.
//!
//! The access log (the `answered` line of every request, target
//! [`ACCESS_LOG_TARGET`]) is held in a buffer and written at most
//! `SEGQ_LOG_FLUSH_MS` (default [`DEFAULT_FLUSH_MS`]) later, or once
//! [`HOLD_BYTES`] are held: one write for many requests instead of one
//! each (a write to a pipe was about a tenth of a one-user check's server
//! time). Every other line is written at once, after the held lines, so
//! the order of lines is kept; so are the held lines when the process
//! ends or panics. A process killed outright loses at most the last
//! interval's access lines. `SEGQ_LOG_FLUSH_MS=0` writes every line at once.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::Duration;

use clap::ValueEnum;
use segq::server::ops::ACCESS_LOG_TARGET;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The access log's default flush interval, in milliseconds.
pub const DEFAULT_FLUSH_MS: u64 = 100;
/// The longest flush interval `SEGQ_LOG_FLUSH_MS` may ask for.
const MAX_FLUSH_MS: u64 = 10_000;
/// Held access lines are written once they reach this many bytes.
pub const HOLD_BYTES: usize = 64 << 10;

/// The log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, with the current span's fields (a request's
    /// `request_id`).
    Json,
}

/// The format, the level filter and the access log's flush interval
/// (`None`: every line at once) from the flag and the environment (`var`
/// looks a variable up); an error names the variable at fault.
pub fn settings(
    flag: Option<Format>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(Format, EnvFilter, Option<Duration>), String> {
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
    let flush_ms = match set("SEGQ_LOG_FLUSH_MS") {
        None => DEFAULT_FLUSH_MS,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= MAX_FLUSH_MS)
            .ok_or_else(|| {
                format!(
                    "environment variable SEGQ_LOG_FLUSH_MS: expected a whole number of \
                     milliseconds from 0 to {MAX_FLUSH_MS}, got {v:?}"
                )
            })?,
    };
    let flush = (flush_ms > 0).then(|| Duration::from_millis(flush_ms));
    Ok((format, filter, flush))
}

/// The process's access-log buffer, when lines are held.
static BUFFER: OnceLock<Arc<Buffer<io::Stderr>>> = OnceLock::new();

/// Installs the subscriber for the process.
pub fn init(flag: Option<Format>, var: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    let (format, filter, flush) = settings(flag, var)?;
    let writer = Writer {
        buffer: flush.map(|every| {
            let b = BUFFER
                .get_or_init(|| Arc::new(Buffer::new(io::stderr(), every)))
                .clone();
            // A panic's message follows the lines logged before it.
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if let Some(b) = BUFFER.get() {
                    b.flush_unless_busy();
                }
                previous(info);
            }));
            b
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
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

/// Writes the held access lines now (at the end of the process).
pub fn flush() {
    if let Some(b) = BUFFER.get() {
        b.flush();
    }
}

/// The subscriber's writer: stderr, through the buffer when there is one.
struct Writer<W> {
    buffer: Option<Arc<Buffer<W>>>,
}

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for Writer<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            to: self.buffer.as_ref(),
            hold: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        Line {
            to: self.buffer.as_ref(),
            hold: held(meta),
        }
    }
}

/// Whether a line of `meta` waits in the buffer: an access line, unless
/// it is a warning or an error.
fn held(meta: &Metadata<'_>) -> bool {
    meta.target() == ACCESS_LOG_TARGET && *meta.level() >= Level::INFO
}

/// One log line on its way (the formatter writes a whole line at once).
struct Line<'a, W: Write + Send + 'static> {
    to: Option<&'a Arc<Buffer<W>>>,
    hold: bool,
}

impl<W: Write + Send + 'static> Write for Line<'_, W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        match self.to {
            Some(b) if self.hold => Buffer::hold(b, line)?,
            Some(b) => b.write_now(line)?,
            None => io::stderr().write_all(line)?,
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Held lines and the sink they go to, behind one lock: a line written at
/// once goes after the held ones.
struct Buffer<W> {
    state: Mutex<Held<W>>,
    every: Duration,
    /// Whether the thread that writes held lines runs.
    flusher: OnceLock<bool>,
}

struct Held<W> {
    bytes: Vec<u8>,
    sink: W,
}

impl<W: Write> Held<W> {
    /// Writes the held bytes; they are dropped even if the write fails
    /// (a log that cannot be written is not retried).
    fn write_held(&mut self) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        let r = self.sink.write_all(&self.bytes);
        self.bytes.clear();
        r
    }
}

impl<W: Write + Send + 'static> Buffer<W> {
    fn new(sink: W, every: Duration) -> Self {
        Buffer {
            state: Mutex::new(Held {
                bytes: Vec::new(),
                sink,
            }),
            every,
            flusher: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Held<W>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `line`, writing what is held once it reaches [`HOLD_BYTES`].
    /// The first held line starts the thread that writes them every
    /// interval; if it cannot start, lines are written at once.
    fn hold(this: &Arc<Self>, line: &[u8]) -> io::Result<()> {
        let flushing = *this.flusher.get_or_init(|| {
            let b = Arc::downgrade(this);
            let every = this.every;
            std::thread::Builder::new()
                .name("segq-log-flush".into())
                .spawn(move || loop {
                    std::thread::sleep(every);
                    match b.upgrade() {
                        Some(b) => b.flush(),
                        None => return,
                    }
                })
                .is_ok()
        });
        if !flushing {
            return this.write_now(line);
        }
        let mut h = this.lock();
        h.bytes.extend_from_slice(line);
        if h.bytes.len() >= HOLD_BYTES {
            h.write_held()?;
        }
        Ok(())
    }

    /// Writes the held lines, then `line`.
    fn write_now(&self, line: &[u8]) -> io::Result<()> {
        let mut h = self.lock();
        let held = h.write_held();
        h.sink.write_all(line)?;
        held
    }

    /// Writes the held lines.
    fn flush(&self) {
        let mut h = self.lock();
        let _ = h.write_held();
        let _ = h.sink.flush();
    }

    /// [`Buffer::flush`], unless the lock is held (a panic in the middle
    /// of a write must not wait for itself).
    fn flush_unless_busy(&self) {
        let mut h = match self.state.try_lock() {
            Ok(h) => h,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let _ = h.write_held();
        let _ = h.sink.flush();
    }
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

    #[test]
    fn segq_log_flush_ms_sets_the_access_log_interval() {
        let flush = |pairs: &[(&str, &str)]| settings(None, &env(pairs)).map(|s| s.2);
        assert_eq!(
            flush(&[]),
            Ok(Some(Duration::from_millis(DEFAULT_FLUSH_MS)))
        );
        assert_eq!(
            flush(&[("SEGQ_LOG_FLUSH_MS", " 250 ")]),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(flush(&[("SEGQ_LOG_FLUSH_MS", "0")]), Ok(None));
        for bad in ["soon", "-1", "1.5", "10001"] {
            let e = flush(&[("SEGQ_LOG_FLUSH_MS", bad)]).unwrap_err();
            assert!(
                e.contains("environment variable SEGQ_LOG_FLUSH_MS") && e.contains(bad),
                "{e}"
            );
        }
    }

    /// A sink the test reads while the buffer owns it.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn held_lines_wait_and_keep_their_place_before_a_line_written_at_once() {
        let sink = Sink::default();
        let b = Arc::new(Buffer::new(sink.clone(), HOUR));
        Buffer::hold(&b, b"a1\n").unwrap();
        Buffer::hold(&b, b"a2\n").unwrap();
        assert_eq!(sink.text(), "");
        b.write_now(b"warn\n").unwrap();
        assert_eq!(sink.text(), "a1\na2\nwarn\n");
        Buffer::hold(&b, b"a3\n").unwrap();
        assert_eq!(sink.text(), "a1\na2\nwarn\n");
        b.flush();
        assert_eq!(sink.text(), "a1\na2\nwarn\na3\n");
        b.flush();
        assert_eq!(sink.text(), "a1\na2\nwarn\na3\n");
    }

    #[test]
    fn held_lines_are_written_once_they_fill_the_buffer() {
        let sink = Sink::default();
        let b = Arc::new(Buffer::new(sink.clone(), HOUR));
        let line = [b'x'; 1000];
        let mut n = 0;
        while sink.text().is_empty() {
            Buffer::hold(&b, &line).unwrap();
            n += 1;
            assert!(n * line.len() <= HOLD_BYTES + line.len());
        }
        assert_eq!(n, HOLD_BYTES.div_ceil(line.len()));
        assert_eq!(sink.text().len(), n * line.len());
    }

    #[test]
    fn the_flusher_writes_held_lines_within_its_interval() {
        let sink = Sink::default();
        let b = Arc::new(Buffer::new(sink.clone(), Duration::from_millis(5)));
        Buffer::hold(&b, b"later\n").unwrap();
        let start = std::time::Instant::now();
        while sink.text().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "later\n");
    }

    #[test]
    fn only_access_lines_below_warn_are_held() {
        let sink = Sink::default();
        let writer = Writer {
            buffer: Some(Arc::new(Buffer::new(sink.clone(), HOUR))),
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_LOG_TARGET, n = 1, "answered");
            tracing::debug!(target: ACCESS_LOG_TARGET, n = 2, "answered");
            assert_eq!(sink.text(), "");
            tracing::info!(target: "segq::serve", "listening");
            let t = sink.text();
            let at = |s: &str| t.find(s).unwrap_or_else(|| panic!("no {s} in {t}"));
            assert!(at("n=1") < at("n=2") && at("n=2") < at("listening"), "{t}");
            tracing::warn!(target: ACCESS_LOG_TARGET, n = 3, "answered");
            assert!(sink.text().contains("n=3"));
        });
    }
}
