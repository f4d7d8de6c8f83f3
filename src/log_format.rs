//! The text log line, written without most of the formatting machinery.
//!
//! Every relayed message logs three lines, and with tracing-subscriber's own `Full` format
//! those lines were a fifth of the node's user-space instructions per message (callgrind, see
//! BENCHMARKS.md): the field names go through ANSI painting even when nothing is painted, the
//! message is escaped one `char` at a time, and the timestamp is formatted field by field with
//! padding. [`TextLine`] writes the very same bytes (a test holds it to tracing-subscriber's
//! output for every kind of field) with plain string writes where it can: the date and time of
//! the current second are kept per thread, field names and plain ASCII values are copied, and
//! only what needs escaping goes through `Debug`. It is used for the plain text format; a
//! terminal (colours) and `--log-format json` keep tracing-subscriber's own formatters.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// `2026-12-06T21:37:58.045302Z  INFO target: message name=value…`, as tracing-subscriber's
/// `Full` format writes it without ANSI colours.
pub struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // Events from the `log` crate carry their real target in fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str(match *meta.level() {
            Level::TRACE => " TRACE ",
            Level::DEBUG => " DEBUG ",
            Level::INFO => "  INFO ",
            Level::WARN => "  WARN ",
            Level::ERROR => " ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields { writer: writer.by_ref(), first: true, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The event's fields as tracing-subscriber's `DefaultVisitor` writes them: the message as it
/// is (terminal escapes escaped), every other field as ` name=` and its `Debug`.
struct Fields<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// The space before every field but the first, and the field's name unless it is the
    /// message; `false` for fields the line leaves out.
    fn start(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        // What tracing-log put there: already in the line's target.
        if name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.writer.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result =
                self.result.and_then(|()| self.writer.write_str(name)).and_then(|()| self.writer.write_char('='));
        }
        self.result.is_ok()
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            TerminalSafe(&mut self.writer).write_str(value)
        } else if value.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
            // What `Debug` would write for it, without walking it char by char.
            self.writer
                .write_char('"')
                .and_then(|()| self.writer.write_str(value))
                .and_then(|()| self.writer.write_char('"'))
        } else {
            write!(self.writer, "{value:?}")
        };
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.start(field) {
            return;
        }
        self.result = if field.name() == "message" {
            write!(TerminalSafe(&mut self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        };
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !self.start(field) {
            return;
        }
        // The error, then (when it has any) ` name.sources=[…]`, all as one value: as
        // tracing-subscriber writes it, its text with terminal escapes escaped.
        let mut line = String::new();
        let _ = write!(line, "{value}");
        if let Some(mut source) = value.source() {
            let _ = write!(line, " {}.sources=[", field.name());
            loop {
                let _ = write!(line, "{source}");
                match source.source() {
                    Some(next) => {
                        line.push_str(", ");
                        source = next;
                    }
                    None => break,
                }
            }
            line.push(']');
        }
        self.result = TerminalSafe(&mut self.writer).write_str(&line);
    }
}

/// A writer that escapes what could drive a terminal (ESC, BEL, BS, FF, DEL and the C1
/// controls), as tracing-subscriber does for messages; text without any is copied whole.
struct TerminalSafe<'a, 'b>(&'a mut Writer<'b>);

impl fmt::Write for TerminalSafe<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // C1 controls are U+0080–U+009F: 0xC2 then 0x80–0x9F in UTF-8.
        let risky = |b: &u8| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2);
        if !text.as_bytes().iter().any(risky) {
            return self.0.write_str(text);
        }
        for c in text.chars() {
            match c {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                c if ('\u{80}'..='\u{9f}').contains(&c) => write!(self.0, "\\u{{{:x}}}", c as u32)?,
                c => self.0.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The date and time of one second, as written, for the thread that last wrote a line in it.
struct Second {
    epoch: u64,
    text: [u8; 19],
}

thread_local! {
    static SECOND: RefCell<Option<Second>> = const { RefCell::new(None) };
}

/// `2026-12-06T21:37:58.045302Z` (UTC, microseconds), as tracing-subscriber's `SystemTime`
/// timer writes it for times from 1970 to 9999.
fn write_timestamp(writer: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (epoch, micros) = (since.as_secs(), since.subsec_micros());
    let mut line = *b"0000-00-00T00:00:00.000000Z";
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        let second = match cached.as_mut() {
            Some(second) if second.epoch == epoch => second,
            _ => cached.insert(Second { epoch, text: date_time(epoch) }),
        };
        if let Some(head) = line.get_mut(..19) {
            head.copy_from_slice(&second.text);
        }
    });
    put_digits(&mut line, 20..26, u64::from(micros));
    // Only ASCII digits and punctuation are in it.
    writer.write_str(std::str::from_utf8(&line).unwrap_or("1970-01-01T00:00:00.000000Z"))
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since 1970 (once a second per thread: `time` does it).
fn date_time(epoch: u64) -> [u8; 19] {
    let mut text = *b"1970-01-01T00:00:00";
    let at = i64::try_from(epoch).ok().and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok());
    if let Some(at) = at {
        put_digits(&mut text, 0..4, u64::try_from(at.year()).unwrap_or(0));
        put_digits(&mut text, 5..7, u64::from(u8::from(at.month())));
        put_digits(&mut text, 8..10, u64::from(at.day()));
        put_digits(&mut text, 11..13, u64::from(at.hour()));
        put_digits(&mut text, 14..16, u64::from(at.minute()));
        put_digits(&mut text, 17..19, u64::from(at.second()));
    }
    text
}

/// Writes `n`'s last `at.len()` decimal digits, leading zeros included, over `text[at]`.
fn put_digits(text: &mut [u8], at: std::ops::Range<usize>, mut n: u64) {
    for i in at.rev() {
        if let Some(digit) = text.get_mut(i) {
            *digit = b'0' + (n % 10) as u8;
        }
        n /= 10;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Outer(Inner);
    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot relay: \x1b[31mthe back end\x1b[0m said no")
        }
    }
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection reset")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    impl std::error::Error for Inner {}

    /// Every kind of event the node logs (and some it should survive), through both formats.
    fn events() {
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        tracing::info!(session = %"6B15D5AE000F9E", client = %ip, helo = "vm", sender = "a@example.com", recipients = 1_u64, size = 4234_u64, "message");
        tracing::warn!(limit = -3_i64, ok = true, ratio = 0.5_f64, list = ?vec!["a", "b"], "several kinds");
        tracing::error!(
            helo = "evil\r\n\"quoted\" \\ back\x1b[31m",
            name = "jöran",
            combining = "\u{301}x",
            "a quoted field"
        );
        tracing::info!("a message with \x1b[2J an escape, a bell \x07, a C1 \u{9b}, DEL \x7f and a newline\nhere");
        tracing::info!(message = "message as a field");
        tracing::info!(r#type = "raw", "raw identifier");
        tracing::info!(target: "mtac::other", count = 0_u64, "another target");
        tracing::debug!("debug");
        tracing::trace!(x = 1_u64);
        tracing::info!(error = &Outer(Inner) as &(dyn std::error::Error + 'static), "an error with a source");
        tracing::info!(error = &Inner as &(dyn std::error::Error + 'static));
        tracing::info!(empty = "", "");
        tracing::info!(formatted = format_args!("{} and {}", 1, "two"), "args {}", 3);
        let span = tracing::info_span!("session", id = 7_u64, helo = "mx");
        let _in = span.enter();
        let inner = tracing::info_span!("relay");
        let _in2 = inner.enter();
        tracing::info!(step = "rcpt", "inside two spans");
    }

    fn capture(ours: bool) -> String {
        let out = Captured::default();
        let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(out.clone());
        let filter = tracing_subscriber::filter::LevelFilter::TRACE;
        if ours {
            let subscriber = tracing_subscriber::registry().with(layer.event_format(TextLine).with_filter(filter));
            tracing::subscriber::with_default(subscriber, events);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
            tracing::subscriber::with_default(subscriber, events);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text
    }

    use tracing_subscriber::Layer as _;

    #[test]
    fn lines_are_the_bytes_tracing_subscriber_writes() {
        let (theirs, ours) = (capture(false), capture(true));
        let strip = |text: &str| -> Vec<String> {
            text.lines()
                .map(|line| {
                    // The timestamps differ by when each ran: checked on their own below. (A
                    // newline in a message is written as it is, by both.)
                    let stamped = line.len() > 27 && line.as_bytes()[4] == b'-' && line.as_bytes()[26] == b'Z';
                    if stamped {
                        line[27..].to_owned()
                    } else {
                        line.to_owned()
                    }
                })
                .collect()
        };
        let (theirs, ours) = (strip(&theirs), strip(&ours));
        assert_eq!(theirs.len(), 15, "{theirs:#?}");
        for (theirs, ours) in theirs.iter().zip(&ours) {
            assert_eq!(ours, theirs);
        }
        assert_eq!(ours.len(), theirs.len());
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_with_microseconds() {
        let format = time::format_description::parse_borrowed::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z",
        )
        .unwrap();
        for (secs, micros) in [
            (0, 0),
            (951_782_400, 1),
            (1_795_355_100, 999_999),
            (1_796_687_878, 45_302),
            (4_102_444_799, 500_000),
            (253_402_300_799, 123_456),
            (1_796_687_878, 45_303),
        ] {
            let at = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
            let mut ours = String::new();
            write_timestamp(&mut ours, at).unwrap();
            // Twice: the second comes from the thread's cache.
            let mut again = String::new();
            write_timestamp(&mut again, at).unwrap();
            let expected = time::OffsetDateTime::from(at).format(&format).unwrap();
            assert_eq!(ours, expected);
            assert_eq!(again, expected);
        }
    }
}
