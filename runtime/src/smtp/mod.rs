//! The SMTP protocol pieces, sans I/O: bytes in, values out.
//!
//! Nothing here touches a socket, a timer or tokio. The net layer reads bytes into a buffer
//! and hands them to these types; the session state machine decides what the values mean and
//! which [`Reply`] to send. That split is what lets whole sessions be unit-tested without a
//! socket, and lets the fuzz targets in `fuzz/` hit the parsers directly.
//!
//! The pieces, in the order a connection meets them:
//!
//! * [`line`](mod@line): [`LineReader`] frames command lines on a caller-owned buffer and reports
//!   over-long lines without ever holding more than the limit.
//! * [`command`]: [`parse`] turns one line into a [`Command`], or a [`ParseError`] whose
//!   [`ParseError::reply`] is the RFC 5321/3463 answer. Written by hand rather than with
//!   smtp-proto's parser; the module docs say why.
//! * [`data`]: [`DataReceiver`] streams the message after `354`, dot-unstuffing it, stopping
//!   only at `CR LF . CR LF`, and keeping bare CR, bare LF and NUL away from the back end.
//!   [`DotStuffer`] does the reverse for the relay.
//! * [`reply`]: [`Reply`] writes (multi-line) replies with sanitised text, and builds the
//!   `EHLO` answer from [`EhloCapabilities`].
//!
//! The hidden `fuzz` module holds the checks that the fuzz targets in `fuzz/` run; `cargo test`
//! replays their committed corpora through the same checks.
//!
//! **Invariant: the end of a message is decided once, here, on the raw bytes, and only a real
//! `CR LF . CR LF` ends it.** Everything downstream gets normalised, unstuffed content.
//!
//! ```
//! use mtac_runtime::smtp::{parse, BarePolicy, Command, DataReceiver, Frame, LineReader};
//!
//! let mut buf = b"DATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n".to_vec();
//! let mut lines = LineReader::new(510);
//! let framed = lines.read(&buf);
//! let Frame::Line(line) = framed.frame else { unreachable!() };
//! assert_eq!(parse(line), Ok(Command::Data));
//! buf.drain(..framed.consumed);
//!
//! let mut rx = DataReceiver::new(10 << 20, BarePolicy::Reject);
//! let mut spool = Vec::new();
//! let progress = rx.feed(&buf, &mut spool);
//! assert!(progress.done);
//! assert_eq!(spool, b"Subject: hi\r\n\r\n.dot\r\n");
//! assert_eq!(rx.check(), Ok(()));
//! buf.drain(..progress.consumed);
//! assert_eq!(buf, b"QUIT\r\n");
//! ```

pub mod address;
pub mod command;
pub mod data;
#[doc(hidden)]
pub mod fuzz;
pub mod headers;
pub mod line;
pub mod reply;

pub use command::{
    helo_name_is_valid, parse, AddressError, Body, Command, ForwardPath, MailFrom, Mailbox, ParseError, RcptTo,
    ReversePath,
};
pub use data::{BarePolicy, DataError, DataProgress, DataReceiver, DataStats, DotStuffer};
pub use headers::VerdictFilter;
pub use line::{Frame, Framed, LineReader, RFC5321_MAX_COMMAND_LINE};
pub use reply::{EhloCapabilities, EnhancedCode, Reply, ReplyError, MAX_REPLY_LINE};
