//! Logging for `mtac run`: text or JSON lines on stderr (journald, docker logs), and optionally
//! RFC 5424 syslog over UDP or a unix datagram socket for a farm's central syslog.
//!
//! Syslog is a second `tracing` layer whose writer wraps each formatted event in an RFC 5424
//! header (facility mail, the event's severity, UTC timestamp, host, `mtac`, pid) and sends it as
//! one datagram. The socket is non-blocking: when the collector cannot keep up, lines are
//! dropped (and counted on stderr at exit) rather than stalling a session thread — losing a log
//! line is better than delaying every SMTP session on the node.

use std::io::{self, Write};
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::log_writer::{LogWriter, MakeQueued};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// RFC 5424 facility "mail system".
const FACILITY_MAIL: u8 = 2;
/// Longest datagram sent; RFC 5424 receivers must take 480 bytes and should take 2048.
const MAX_DATAGRAM: usize = 2048;

/// Where syslog lines go.
#[derive(Debug, Clone)]
pub enum SyslogTarget {
    Udp(String),
    Unix(std::path::PathBuf),
}

impl std::str::FromStr for SyslogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(address) = s.strip_prefix("udp://") {
            Ok(SyslogTarget::Udp(address.to_owned()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            Ok(SyslogTarget::Unix(path.into()))
        } else if s.starts_with('/') {
            Ok(SyslogTarget::Unix(s.into()))
        } else {
            Err(format!("`{s}`: use udp://HOST:PORT, unix:///dev/log or a socket path"))
        }
    }
}

enum Socket {
    Udp(UdpSocket),
    Unix(UnixDatagram),
}

/// Sends one formatted event per datagram.
pub struct Syslog {
    socket: Socket,
    hostname: String,
    pid: u32,
    dropped: AtomicU64,
}

impl Syslog {
    pub fn connect(target: &SyslogTarget) -> io::Result<Syslog> {
        let socket = match target {
            SyslogTarget::Udp(address) => {
                let socket = UdpSocket::bind(if address.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })?;
                socket.connect(address)?;
                socket.set_nonblocking(true)?;
                Socket::Udp(socket)
            }
            SyslogTarget::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                socket.set_nonblocking(true)?;
                Socket::Unix(socket)
            }
        };
        let hostname = local_hostname();
        Ok(Syslog { socket, hostname, pid: std::process::id(), dropped: AtomicU64::new(0) })
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, datagram: &[u8]) {
        let sent = match &self.socket {
            Socket::Udp(s) => s.send(datagram),
            Socket::Unix(s) => s.send(datagram),
        };
        if sent.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The RFC 5424 header for an event of `level`, now.
    fn header(&self, level: &Level) -> Vec<u8> {
        let severity = match *level {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "-".to_owned());
        // <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG
        format!("<{}>1 {timestamp} {} mtac {} - - ", FACILITY_MAIL * 8 + severity, self.hostname, self.pid).into_bytes()
    }
}

fn local_hostname() -> String {
    // uname(2), not /proc/sys/kernel/hostname: systemd's ProcSubset=pid hides /proc/sys.
    let name = mtac_runtime::hostname();
    let name = name.trim();
    // HOSTNAME is PRINTUSASCII without spaces, at most 255 (RFC 5424 6.2.4); "-" when unknown.
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        "-".to_owned()
    } else {
        name.to_owned()
    }
}

/// One event's datagram, sent when the formatter is done with it.
pub struct SyslogLine {
    syslog: Arc<Syslog>,
    buffer: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            self.buffer.pop();
        }
        // One line per datagram: a newline inside a field must not forge a second record.
        for b in &mut self.buffer {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        self.buffer.truncate(MAX_DATAGRAM);
        self.syslog.send(&self.buffer);
    }
}

#[derive(Clone)]
pub struct MakeSyslog(pub Arc<Syslog>);

impl<'a> MakeWriter<'a> for MakeSyslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine { buffer: self.0.header(&Level::INFO), syslog: self.0.clone() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine { buffer: self.0.header(meta.level()), syslog: self.0.clone() }
    }
}

/// How `mtac run` logs.
pub struct LogSettings {
    pub json: bool,
    pub syslog: Option<SyslogTarget>,
}

/// The node's outputs, for what they report at exit.
pub struct Outputs {
    pub stderr: Arc<LogWriter>,
    pub syslog: Option<Arc<Syslog>>,
}

/// Dropped when `mtac run` returns, whichever way: what is queued is written out, and what was
/// lost is said.
impl Drop for Outputs {
    fn drop(&mut self) {
        self.stderr.finish();
        if let Some(dropped) = self.syslog.as_ref().map(|s| s.dropped()).filter(|n| *n > 0) {
            eprintln!("mtac: {dropped} log line(s) could not be sent to syslog");
        }
        let dropped = self.stderr.dropped();
        if dropped > 0 {
            eprintln!("mtac: {dropped} log line(s) were dropped: stderr did not keep up");
        }
    }
}

/// Install the subscriber, its stderr lines written by their own thread (`log_writer`).
pub fn init(settings: &LogSettings) -> Result<Outputs, String> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `mtac log-level` changes it in the running node, over the admin socket: one reloadable
    // copy per output (a per-layer filter is one layer's), all set together.
    let current = filter.to_string();
    let (stderr_filter, stderr_handle) = tracing_subscriber::reload::Layer::new(filter);
    let (syslog_filter, syslog_handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(&current));
    mtac_runtime::admin::register_log_filter(
        current,
        Box::new(move |directive| {
            let parse = || tracing_subscriber::EnvFilter::try_new(directive).map_err(|e| e.to_string());
            stderr_handle.reload(parse()?).map_err(|e| e.to_string())?;
            syslog_handle.reload(parse()?).map_err(|e| e.to_string())
        }),
    );
    // Colours only on a terminal: log files and collectors get plain text.
    let writer =
        Arc::new(LogWriter::start(Box::new(io::stderr())).map_err(|e| format!("cannot start the log writer: {e}"))?);
    let terminal = std::io::stderr().is_terminal();
    let stderr = tracing_subscriber::fmt::layer().with_ansi(terminal).with_writer(MakeQueued(writer.clone()));
    let stderr = if settings.json {
        stderr.json().boxed()
    } else if terminal {
        stderr.boxed()
    } else {
        // The same bytes as the line above writes without colours, for less CPU per line.
        stderr.event_format(crate::log_format::TextLine).boxed()
    };
    let syslog = match &settings.syslog {
        Some(target) => {
            Some(Arc::new(Syslog::connect(target).map_err(|e| format!("cannot reach syslog at {target:?}: {e}"))?))
        }
        None => None,
    };
    let syslog_layer = syslog.as_ref().map(|s| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_writer(MakeSyslog(s.clone()))
    });
    // `mtac trace` sees the node's decision lines whatever the log level: its own fixed filter,
    // so no debug event of another crate is ever built for it.
    let trace =
        TraceLayer.with_filter(tracing_subscriber::filter::Targets::new().with_target("mtac_runtime", Level::INFO));
    tracing_subscriber::registry()
        .with(stderr.with_filter(stderr_filter))
        .with(syslog_layer.with_filter(syslog_filter))
        .with(trace)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    Ok(Outputs { stderr: writer, syslog })
}

/// Hands the node's decision lines (events naming a `client`) to `mtac trace` readers, only
/// while there are some.
struct TraceLayer;

impl<S: tracing::Subscriber> Layer<S> for TraceLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        if !mtac_runtime::admin::tracing_wanted() {
            return;
        }
        let mut line = TraceFields::default();
        event.record(&mut line);
        let Some(client) = line.client else { return };
        let meta = event.metadata();
        let text = format!("{} {:>5} {}{}", clock(), meta.level(), line.message, line.fields);
        mtac_runtime::admin::publish_trace(mtac_runtime::admin::TraceLine {
            client: Some(client),
            farm: line.farm,
            text,
            dialogue: false,
        });
    }
}

/// An event's message, `client`, `farm` and every field as ` name=value`.
#[derive(Default)]
struct TraceFields {
    message: String,
    fields: String,
    client: Option<std::net::IpAddr>,
    farm: Option<String>,
}

impl tracing::field::Visit for TraceFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            // `client = %ip`: a Display value, whose Debug is its Display.
            "client" | "farm" => self.record_str(field, &format!("{value:?}")),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write as _;
        match field.name() {
            "message" => value.clone_into(&mut self.message),
            "farm" => {
                self.farm = Some(value.to_owned());
                let _ = write!(self.fields, " farm={value}");
            }
            "client" => {
                self.client = value.parse().ok();
                let _ = write!(self.fields, " client={value}");
            }
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

/// `HH:MM:SS.mmm` UTC, for a trace line.
fn clock() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (s, ms) = (now.as_secs() % 86_400, now.subsec_millis());
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, (s % 3600) / 60, s % 60)
}
