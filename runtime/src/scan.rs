//! Content checks after DATA, before the final reply: MIME rules (mail-parser) and the scanners
//! operators already run — clamd (INSTREAM), spamd (SPAMC), rspamd (HTTP `/checkv2`) — asked
//! concurrently, each with its own timeout and failure mode.
//!
//! Because mtac keeps no queue, a virus or a spam is refused while the sender still holds the
//! message: it is the sender's problem, never a bounce of ours (seeds 003 and 004 ran amavis as
//! a pre-queue proxy for exactly this).
//!
//! Every scanner reads the message from the RAM-disk spool in 64 KiB chunks as it sends it
//! ([`Message`]): memory per scan is one chunk, never the message, however many sessions wait on
//! a slow scanner. What the scanners found becomes header lines that the relay sends in front of
//! the spooled message; the spool file itself is never rewritten.

use crate::spool::SpoolReader;
use mtac_ruleset::model::{MimeRules, Scanner, ScannerKind};
use mtac_ruleset::rules;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most a scanner's answer may be (spamd's symbol list, rspamd's JSON).
const MAX_ANSWER: usize = 256 * 1024;
/// The size of the chunks a scanner is sent (clamd INSTREAM frames each; clamd's own default
/// StreamMaxLength is 25 MiB in all).
const CHUNK: usize = 64 * 1024;

/// The message as a scanner reads it: the spool file from `start` to its end.
#[derive(Debug, Clone, Copy)]
pub struct Message<'s> {
    pub spool: &'s SpoolReader,
    /// Where the part this scanner reads begins (clamd skips mtac's own Received header, so it
    /// sees exactly the sender's bytes and a message at the size limit fits its stream limit).
    pub start: u64,
}

impl Message<'_> {
    pub fn len(&self) -> u64 {
        self.spool.len().saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Send the message in chunks; `frame` writes what goes before each chunk.
    async fn send(
        &self,
        stream: &mut Box<dyn Stream>,
        frame: impl Fn(usize) -> Option<[u8; 4]>,
    ) -> Result<(), ScanError> {
        let mut buf = vec![0u8; CHUNK];
        let mut offset = self.start;
        while offset < self.spool.len() {
            let n = self.spool.read_at(offset, &mut buf)?;
            if n == 0 {
                break;
            }
            if let Some(prefix) = frame(n) {
                stream.write_all(&prefix).await?;
            }
            stream.write_all(buf.get(..n).unwrap_or_default()).await?;
            offset += n as u64;
        }
        Ok(())
    }
}

/// Why a scanner could not give a verdict. Never a reason for a 5xx: the scanner's failure
/// mode decides between 451 and accepting.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// What one scanner said.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Clean,
    Virus(String),
    /// A spam score, the scanner's own threshold, and the rules that matched.
    Score {
        score: f64,
        threshold: Option<f64>,
        symbols: Vec<String>,
        scanner_rejects: bool,
    },
}

/// The envelope facts rspamd wants alongside the message, so its own checks (SPF, hfilter,
/// reputation, its skips for authenticated users) see the session the node saw.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub client: String,
    /// The client's reverse-DNS name, only when forward-confirmed (FCrDNS). Otherwise no
    /// `Hostname` is sent: rspamd 3.4 takes any value, `unknown` included, as a name that
    /// resolved, and scores a missing one as no reverse DNS (`RDNS_NONE`).
    pub hostname: Option<String>,
    pub helo: String,
    pub sender: String,
    pub recipients: Vec<String>,
    /// The authenticated user: rspamd skips its checks of the client and envelope for them.
    pub user: Option<String>,
    pub queue_id: String,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// `unix:/path` or `host:port`.
async fn connect(address: &str) -> Result<Box<dyn Stream>, ScanError> {
    match address.strip_prefix("unix:") {
        Some(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await.map_err(ScanError::Connect)?)),
        None => {
            let stream = tokio::net::TcpStream::connect(address).await.map_err(ScanError::Connect)?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream))
        }
    }
}

async fn read_answer(stream: &mut Box<dyn Stream>) -> Result<Vec<u8>, ScanError> {
    let mut answer = Vec::with_capacity(1024);
    let mut limited = stream.take(MAX_ANSWER as u64);
    limited.read_to_end(&mut answer).await?;
    Ok(answer)
}

/// clamd INSTREAM: `zINSTREAM\0`, chunks framed by a 4-byte big-endian length, a zero length;
/// the answer is `stream: OK` or `stream: NAME FOUND`.
pub async fn clamd(address: &str, message: Message<'_>) -> Result<Finding, ScanError> {
    let mut stream = connect(address).await?;
    stream.write_all(b"zINSTREAM\0").await?;
    // A chunk is at most CHUNK (64 KiB) long: its length always fits the 4-byte frame.
    message.send(&mut stream, |n| u32::try_from(n).ok().map(u32::to_be_bytes)).await?;
    stream.write_all(&[0, 0, 0, 0]).await?;
    stream.flush().await?;
    let answer = read_answer(&mut stream).await?;
    parse_clamd(&answer)
}

fn parse_clamd(answer: &[u8]) -> Result<Finding, ScanError> {
    let text = String::from_utf8_lossy(answer);
    let text = text.trim_end_matches(['\0', '\n', '\r']);
    let verdict = text.strip_prefix("stream: ").unwrap_or(text);
    if verdict == "OK" {
        Ok(Finding::Clean)
    } else if let Some(name) = verdict.strip_suffix(" FOUND") {
        // A virus name is clamd's: keep it printable and short before it reaches a reply.
        let name: String = name.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(100).collect();
        Ok(Finding::Virus(name))
    } else {
        Err(ScanError::Protocol(format!("clamd: {}", verdict.chars().take(200).collect::<String>())))
    }
}

/// spamd, SPAMC/1.5 `SYMBOLS`: the header `Spam: True ; 7.2 / 5.0` and the matched rules.
pub async fn spamd(address: &str, message: Message<'_>) -> Result<Finding, ScanError> {
    let mut stream = connect(address).await?;
    let request = format!("SYMBOLS SPAMC/1.5\r\nContent-length: {}\r\nUser: mtac\r\n\r\n", message.len());
    stream.write_all(request.as_bytes()).await?;
    message.send(&mut stream, |_| None).await?;
    stream.flush().await?;
    let answer = read_answer(&mut stream).await?;
    parse_spamd(&answer)
}

fn parse_spamd(answer: &[u8]) -> Result<Finding, ScanError> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or("");
    if !status.starts_with("SPAMD/") || !status.contains(" 0 ") {
        return Err(ScanError::Protocol(format!("spamd: {}", status.chars().take(200).collect::<String>())));
    }
    let spam = lines
        .find_map(|l| l.strip_prefix("Spam:"))
        .ok_or_else(|| ScanError::Protocol("spamd: no Spam header".into()))?;
    // "True ; 1000.3 / 5.0"
    let (flag, scores) = spam.split_once(';').ok_or_else(|| ScanError::Protocol(format!("spamd: {spam}")))?;
    let (score, threshold) = scores.split_once('/').ok_or_else(|| ScanError::Protocol(format!("spamd: {spam}")))?;
    let score: f64 = score.trim().parse().map_err(|_| ScanError::Protocol(format!("spamd score: {score}")))?;
    let threshold: f64 = threshold.trim().parse().map_err(|_| ScanError::Protocol(format!("spamd: {threshold}")))?;
    let symbols = body.trim().split(',').filter(|s| !s.is_empty()).map(|s| s.trim().to_owned()).collect();
    let _ = flag;
    Ok(Finding::Score { score, threshold: Some(threshold), symbols, scanner_rejects: false })
}

/// rspamd's HTTP check API: POST `/checkv2` with the envelope in headers; JSON back.
pub async fn rspamd(url: &str, message: Message<'_>, envelope: &Envelope) -> Result<Finding, ScanError> {
    use http_body_util::BodyExt;
    let rest = url.strip_prefix("http://").ok_or_else(|| ScanError::Protocol(format!("not an http URL: {url}")))?;
    let (authority, base) = match rest.split_once('/') {
        Some((a, path)) => (a, format!("/{}", path.trim_end_matches('/'))),
        None => (rest, String::new()),
    };
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(ScanError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| ScanError::Protocol(format!("rspamd HTTP: {e}")))?;
    let driver = tokio::spawn(connection);
    let mut request = hyper::Request::post(format!("{base}/checkv2"))
        .header(hyper::header::HOST, authority)
        .header("IP", envelope.client.as_str())
        .header("Helo", envelope.helo.as_str())
        .header("From", envelope.sender.as_str())
        .header("Queue-Id", envelope.queue_id.as_str());
    for rcpt in &envelope.recipients {
        request = request.header("Rcpt", rcpt.as_str());
    }
    if let Some(hostname) = &envelope.hostname {
        request = request.header("Hostname", hostname.as_str());
    }
    if let Some(user) = &envelope.user {
        request = request.header("User", user.as_str());
    }
    // The body streams from the spool: hyper needs a body it owns, so it gets its own reader.
    let reader = message.spool.try_clone()?;
    let chunks = futures_util::stream::unfold((reader, message.start), |(reader, offset)| async move {
        if offset >= reader.len() {
            return None;
        }
        let mut buf = vec![0u8; CHUNK];
        match reader.read_at(offset, &mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                let frame = hyper::body::Frame::data(hyper::body::Bytes::from(buf));
                Some((Ok::<_, std::io::Error>(frame), (reader, offset + n as u64)))
            }
            Err(e) => Some((Err(e), (reader, u64::MAX))),
        }
    });
    let request = request
        .header(hyper::header::CONTENT_LENGTH, message.len())
        .body(http_body_util::StreamBody::new(chunks))
        .map_err(|e| ScanError::Protocol(format!("rspamd request: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| ScanError::Protocol(format!("rspamd: {e}")))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| ScanError::Protocol(format!("rspamd body: {e}")))?
        .to_bytes();
    driver.abort();
    if !status.is_success() {
        return Err(ScanError::Protocol(format!("rspamd answered HTTP {status}")));
    }
    parse_rspamd(&body)
}

fn parse_rspamd(body: &[u8]) -> Result<Finding, ScanError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ScanError::Protocol(format!("rspamd JSON: {e}")))?;
    let score = json
        .get("score")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| ScanError::Protocol("rspamd: no score".into()))?;
    let threshold = json.get("required_score").and_then(serde_json::Value::as_f64);
    let mut symbols: Vec<String> = json
        .get("symbols")
        .and_then(serde_json::Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    symbols.sort();
    let scanner_rejects = json.get("action").and_then(serde_json::Value::as_str) == Some("reject");
    Ok(Finding::Score { score, threshold, symbols, scanner_rejects })
}

/// Ask one scanner, within its timeout.
///
/// `spool` holds mtac's Received header and then the sender's message from `sender_start`:
/// clamd reads the sender's bytes alone (a virus scanner gains nothing from our header, and
/// this way a message at the size limit fits clamd's stream limit); the spam scanners read both,
/// since the Received header carries the client they judge.
pub async fn ask(
    scanner: &Scanner,
    spool: &SpoolReader,
    sender_start: u64,
    envelope: &Envelope,
) -> Result<Finding, ScanError> {
    let timeout = Duration::from_secs(u64::from(scanner.timeout));
    let whole = Message { spool, start: 0 };
    let work = async {
        match scanner.kind {
            ScannerKind::Clamav => clamd(&scanner.address, Message { spool, start: sender_start }).await,
            ScannerKind::Spamassassin => spamd(&scanner.address, whole).await,
            ScannerKind::Rspamd => rspamd(&scanner.address, whole, envelope).await,
        }
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ScanError::Timeout(timeout))?
}

pub fn kind_name(kind: ScannerKind) -> &'static str {
    match kind {
        ScannerKind::Clamav => "clamav",
        ScannerKind::Spamassassin => "spamassassin",
        ScannerKind::Rspamd => "rspamd",
    }
}

/// The verdict on a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Relay it, with these header lines in front (each ends with CRLF).
    Pass { headers: String },
    /// Refuse it: reply code, enhanced code, text, and the rule for logs and metrics.
    Refuse { code: u16, enhanced: (u8, u16, u16), text: String, rule: &'static str },
}

/// One scanner's outcome, for the combination and the metrics.
pub struct Outcome<'s> {
    pub scanner: &'s Scanner,
    pub result: Result<Finding, ScanError>,
    pub elapsed: Duration,
}

/// Combine the scanners' outcomes into one verdict: a virus or a score at `reject` refuses
/// (554); a scanner that could not answer defers (451) unless it fails open; otherwise the
/// message passes with X-Spam-* and X-Virus-Scanned headers.
pub fn combine(outcomes: &[Outcome<'_>], hostname: &str) -> Verdict {
    let mut headers = String::new();
    let mut unavailable: Option<&str> = None;
    for o in outcomes {
        match &o.result {
            Ok(Finding::Virus(name)) => {
                return Verdict::Refuse {
                    code: 554,
                    enhanced: (5, 7, 1),
                    text: format!("Message rejected: virus found: {name}"),
                    rule: rules::SCAN_VIRUS,
                }
            }
            Ok(Finding::Clean) => {
                headers.push_str(&format!("X-Virus-Scanned: {} on {hostname} (mtac)\r\n", kind_name(o.scanner.kind)))
            }
            Ok(Finding::Score { score, threshold, symbols, scanner_rejects }) => {
                let reject = o.scanner.reject_score.map(f64::from);
                let tag = o.scanner.tag_score.map(f64::from).or(*threshold);
                if reject.is_some_and(|r| *score >= r) || (reject.is_none() && *scanner_rejects) {
                    return Verdict::Refuse {
                        code: 554,
                        enhanced: (5, 7, 1),
                        text: format!("Message rejected as spam (score {score:.1})"),
                        rule: rules::SCAN_SPAM,
                    };
                }
                let is_spam = tag.is_some_and(|t| *score >= t);
                let name = kind_name(o.scanner.kind);
                if is_spam {
                    headers.push_str("X-Spam-Flag: YES\r\n");
                }
                headers.push_str(&format!("X-Spam-Score: {score:.1}\r\n"));
                let tests: Vec<&str> = symbols
                    .iter()
                    .map(String::as_str)
                    .filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'))
                    .take(50)
                    .collect();
                headers.push_str(&format!(
                    "X-Spam-Status: {}, score={score:.1} tag={} reject={} scanner={name} tests={}\r\n",
                    if is_spam { "Yes" } else { "No" },
                    tag.map_or_else(|| "-".to_owned(), |t| format!("{t:.1}")),
                    reject.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")),
                    if tests.is_empty() { "none".to_owned() } else { fold(&tests.join(",")) },
                ));
            }
            Err(_) if o.scanner.fail_open => {
                headers.push_str(&format!("X-Spam-Status: unscanned, {} unavailable\r\n", kind_name(o.scanner.kind)))
            }
            Err(_) => unavailable = Some(kind_name(o.scanner.kind)),
        }
    }
    if let Some(name) = unavailable {
        return Verdict::Refuse {
            code: 451,
            enhanced: (4, 7, 1),
            text: format!("Message could not be scanned ({name} unavailable), please try again later"),
            rule: rules::SCAN_UNAVAILABLE,
        };
    }
    Verdict::Pass { headers }
}

/// Fold a long comma-separated list into header continuation lines (RFC 5322 2.2.3).
fn fold(list: &str) -> String {
    let mut out = String::new();
    let mut line = 0usize;
    for (i, item) in list.split(',').enumerate() {
        if i > 0 {
            out.push(',');
            line += 1;
        }
        if line + item.len() > 70 {
            out.push_str("\r\n\t");
            line = 0;
        }
        out.push_str(item);
        line += item.len();
    }
    out
}

/// A MIME rule the message breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeViolation {
    pub code: u16,
    pub enhanced: (u8, u16, u16),
    pub text: String,
    pub rule: &'static str,
}

/// Check the message against the farm's MIME rules. `from_is_local` says whether a domain is
/// one of the farm's (for the forged-sender rule; `trusted` clients may use them).
pub fn mime(
    rules: &MimeRules,
    message: &[u8],
    trusted: bool,
    from_is_local: &dyn Fn(&str) -> bool,
) -> Option<MimeViolation> {
    let Some(parsed) = mail_parser::MessageParser::default().parse(message) else {
        return Some(MimeViolation {
            code: 550,
            enhanced: (5, 6, 0),
            text: "Message rejected: not a parsable message".into(),
            rule: rules::MIME_SYNTAX,
        });
    };
    for name in &rules.require_headers {
        let present = parsed.headers().iter().any(|h| h.name.as_str().eq_ignore_ascii_case(name));
        if !present {
            return Some(MimeViolation {
                code: 550,
                enhanced: (5, 6, 0),
                text: format!("Message rejected: missing {name} header"),
                rule: rules::MIME_HEADER,
            });
        }
    }
    if rules.forged_local_sender && !trusted {
        let from = parsed.from().and_then(|a| a.first()).and_then(|a| a.address()).unwrap_or("");
        if let Some((_, domain)) = from.rsplit_once('@') {
            if from_is_local(&domain.to_ascii_lowercase()) {
                return Some(MimeViolation {
                    code: 550,
                    enhanced: (5, 7, 1),
                    text: "Message rejected: forged local sender in From".into(),
                    rule: rules::MIME_FORGED_SENDER,
                });
            }
        }
    }
    if !rules.forbid_extensions.is_empty() || !rules.forbid_types.is_empty() {
        if let Some(v) = forbidden_part(rules, &parsed, 0) {
            return Some(v);
        }
    }
    None
}

/// The first part (nested messages included, to a depth of 8) with a forbidden name or type.
fn forbidden_part(rules: &MimeRules, message: &mail_parser::Message<'_>, depth: u8) -> Option<MimeViolation> {
    use mail_parser::MimeHeaders;
    if depth > 8 {
        return None;
    }
    for part in &message.parts {
        if let Some(name) = part.attachment_name() {
            if let Some(ext) = forbidden_extension(&rules.forbid_extensions, name) {
                let shown: String = name.chars().filter(|c| !c.is_control()).take(80).collect();
                return Some(MimeViolation {
                    code: 554,
                    enhanced: (5, 7, 1),
                    text: format!("Message rejected: attachment type .{ext} not allowed ({shown})"),
                    rule: rules::MIME_EXTENSION,
                });
            }
        }
        if let Some(ct) = part.content_type() {
            let ctype = ct.ctype().to_ascii_lowercase();
            let full = format!("{ctype}/{}", ct.subtype().unwrap_or("").to_ascii_lowercase());
            let wildcard = format!("{ctype}/*");
            if rules.forbid_types.iter().any(|t| *t == full || *t == wildcard) {
                return Some(MimeViolation {
                    code: 554,
                    enhanced: (5, 7, 1),
                    text: format!("Message rejected: attachment type {full} not allowed"),
                    rule: rules::MIME_TYPE,
                });
            }
        }
        if let Some(inner) = part.message() {
            if let Some(v) = forbidden_part(rules, inner, depth + 1) {
                return Some(v);
            }
        }
    }
    None
}

/// Any forbidden extension among the name's dot-separated parts after the first: `a.pdf.exe`
/// (Windows hides the last one), `a.exe.pdf`, `a.EXE.` and `a.exe ` are all caught.
fn forbidden_extension<'r>(forbidden: &'r [String], name: &str) -> Option<&'r str> {
    let name = name.trim_end_matches(['.', ' ', '\t']).to_ascii_lowercase();
    let mut parts = name.split('.');
    parts.next();
    for ext in parts {
        let ext = ext.trim();
        if let Some(f) = forbidden.iter().find(|f| f.as_str() == ext) {
            return Some(f.as_str());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn clamd_answers_are_read() {
        assert_eq!(parse_clamd(b"stream: OK\0").unwrap(), Finding::Clean);
        assert_eq!(
            parse_clamd(b"stream: Eicar-Test-Signature FOUND\0").unwrap(),
            Finding::Virus("Eicar-Test-Signature".into())
        );
        assert!(parse_clamd(b"INSTREAM size limit exceeded. ERROR\0").is_err());
    }

    #[test]
    fn spamd_answers_are_read() {
        let answer = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 22\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,MISSING_DATE";
        match parse_spamd(answer).unwrap() {
            Finding::Score { score, threshold, symbols, .. } => {
                assert_eq!(score, 1000.0);
                assert_eq!(threshold, Some(5.0));
                assert_eq!(symbols, vec!["GTUBE", "MISSING_DATE"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_spamd(b"SPAMD/1.1 76 Bad header line\r\n\r\n").is_err());
    }

    /// Two answers recorded from Debian's rspamd 3.4 (`/checkv2`, default configuration): the
    /// GTUBE string, and a plain message that scores 7.3 ("add header").
    const RSPAMD_GTUBE: &str = r##"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"x@example.org","time_real":0.228021}"##;
    const RSPAMD_CLEAN: &str = r##"{"is_skipped":false,"score":7.300000,"required_score":15.0,"action":"add header","symbols":{"RDNS_NONE":{"name":"RDNS_NONE","score":1.0,"metric_score":1.0,"description":"Cannot resolve reverse DNS for sender's IP"},"ARC_NA":{"name":"ARC_NA","score":0.0,"metric_score":0.0,"description":"ARC signature absent"},"HFILTER_HELO_NORES_A_OR_MX":{"name":"HFILTER_HELO_NORES_A_OR_MX","score":0.300000,"metric_score":0.300000,"description":"Helo no resolve to A or MX","options":["mail.example.org"]},"TO_MATCH_ENVRCPT_ALL":{"name":"TO_MATCH_ENVRCPT_ALL","score":0.0,"metric_score":0.0,"description":"All of the recipients match the envelope"},"MIME_GOOD":{"name":"MIME_GOOD","score":-0.100000,"metric_score":-0.100000,"description":"Known content-type","options":["text/plain"]},"TO_DN_NONE":{"name":"TO_DN_NONE","score":0.0,"metric_score":0.0,"description":"None of the recipients have display names"},"DMARC_NA":{"name":"DMARC_NA","score":0.0,"metric_score":0.0,"description":"No DMARC record","options":["example.org"]},"AUTH_NA":{"name":"AUTH_NA","score":1.0,"metric_score":1.0,"description":"Authenticating message via SPF/DKIM/DMARC/ARC not available"},"RCPT_COUNT_ONE":{"name":"RCPT_COUNT_ONE","score":0.0,"metric_score":0.0,"description":"One recipient","options":["1"]},"HFILTER_HELO_IP_A":{"name":"HFILTER_HELO_IP_A","score":1.0,"metric_score":1.0,"description":"Helo A IP != hostname IP","options":["mail.example.org"]},"FROM_NO_DN":{"name":"FROM_NO_DN","score":0.0,"metric_score":0.0,"description":"From header does not have a display name"},"R_SPF_NA":{"name":"R_SPF_NA","score":0.0,"metric_score":0.0,"description":"Missing SPF record","options":["no SPF record"]},"RCVD_COUNT_ZERO":{"name":"RCVD_COUNT_ZERO","score":0.0,"metric_score":0.0,"description":"Message has no Received headers","options":["0"]},"FROM_EQ_ENVFROM":{"name":"FROM_EQ_ENVFROM","score":0.0,"metric_score":0.0,"description":"From address is the same as the envelope"},"R_DKIM_NA":{"name":"R_DKIM_NA","score":0.0,"metric_score":0.0,"description":"Missing DKIM signature"},"MIME_TRACE":{"name":"MIME_TRACE","score":0.0,"metric_score":0.0,"options":["0:+"]},"HFILTER_FROMHOST_NORES_A_OR_MX":{"name":"HFILTER_FROMHOST_NORES_A_OR_MX","score":1.500000,"metric_score":1.500000,"description":"FROM host no resolve to A or MX","options":["example.org"]},"HFILTER_HOSTNAME_UNKNOWN":{"name":"HFILTER_HOSTNAME_UNKNOWN","score":2.500000,"metric_score":2.500000,"description":"Unknown client hostname (PTR or FCrDNS verification failed)"},"MID_RHS_MATCH_FROM":{"name":"MID_RHS_MATCH_FROM","score":0.0,"metric_score":0.0,"description":"Message-ID RHS matches From domain"},"ONCE_RECEIVED":{"name":"ONCE_RECEIVED","score":0.100000,"metric_score":0.100000,"description":"One received header in a message"}},"messages":{},"message-id":"x@example.org","time_real":0.021199,"milter":{"remove_headers":{"X-Spam":0}}}"##;

    #[test]
    fn recorded_rspamd_answers_are_read() {
        match parse_rspamd(RSPAMD_GTUBE.as_bytes()).unwrap() {
            Finding::Score { score, threshold, symbols, scanner_rejects } => {
                assert_eq!(score, 15.0);
                assert_eq!(threshold, Some(15.0));
                assert!(scanner_rejects, "rspamd's own action is reject");
                assert_eq!(symbols, vec!["GTUBE"]);
            }
            other => panic!("{other:?}"),
        }
        match parse_rspamd(RSPAMD_CLEAN.as_bytes()).unwrap() {
            Finding::Score { score, scanner_rejects, symbols, .. } => {
                assert!((score - 7.3).abs() < 1e-9);
                assert!(!scanner_rejects);
                assert!(symbols.contains(&"RDNS_NONE".to_owned()), "{symbols:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rspamd_verdicts_follow_the_policy_thresholds() {
        let scanner = Scanner {
            kind: ScannerKind::Rspamd,
            address: "http://127.0.0.1:11333".into(),
            timeout: 5,
            fail_open: false,
            tag_score: Some(5),
            reject_score: None,
        };
        let outcome =
            |body: &str| Outcome { scanner: &scanner, result: parse_rspamd(body.as_bytes()), elapsed: Duration::ZERO };
        // No reject score in the policy: rspamd's own "reject" refuses.
        assert!(matches!(combine(&[outcome(RSPAMD_GTUBE)], "mx"), Verdict::Refuse { code: 554, .. }));
        // 7.3 is above the policy's tag (5): flagged, relayed.
        match combine(&[outcome(RSPAMD_CLEAN)], "mx") {
            Verdict::Pass { headers } => {
                assert!(headers.contains("X-Spam-Flag: YES\r\n"), "{headers}");
                assert!(headers.contains("X-Spam-Status: Yes, score=7.3 tag=5.0 reject=- scanner=rspamd"), "{headers}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hidden_extensions_are_found() {
        let forbidden = vec!["exe".to_owned(), "scr".to_owned()];
        assert_eq!(forbidden_extension(&forbidden, "invoice.pdf.exe"), Some("exe"));
        assert_eq!(forbidden_extension(&forbidden, "photo.SCR.jpg"), Some("scr"));
        assert_eq!(forbidden_extension(&forbidden, "setup.exe. "), Some("exe"));
        assert_eq!(forbidden_extension(&forbidden, "exe.pdf"), None, "the base name is not an extension");
        assert_eq!(forbidden_extension(&forbidden, "report.pdf"), None);
    }

    #[test]
    fn long_symbol_lists_are_folded() {
        let list = (0..30).map(|i| format!("RULE_NUMBER_{i}")).collect::<Vec<_>>().join(",");
        let folded = fold(&list);
        assert!(folded.lines().all(|l| l.len() <= 80), "{folded}");
        assert_eq!(folded.replace("\r\n\t", ""), list);
    }
}
