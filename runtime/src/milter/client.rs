//! One milter conversation, on a connection of its own, for the length of an SMTP session:
//! option negotiation, connect and HELO (at the session's first MAIL FROM), then per
//! transaction MAIL, each RCPT the policy accepted, and once the message is spooled DATA, the
//! header fields, end of headers, the body in chunks of at most 64 KiB read from the spool and
//! end of message; ABORT between transactions, QUIT at the end. Each stage is preceded by the
//! macros milters read (`j`, `{daemon_name}`, `i`, `{client_addr}`, `{mail_addr}`…), skipped
//! or sent without waiting for an answer as the milter negotiated.
//!
//! Memory per conversation is one 64 KiB body chunk and one header field (longer fields are cut
//! at [`MAX_FIELD`] before the milter sees them); what the milter sends back is bounded by
//! [`MAX_EDITS`] and [`MAX_ADDED`], and a replaced body goes to a spool file, never to memory.

use super::codec::{self, action, protocol, Command, Reply};
use crate::spool::SpoolReader;
use mtac_ruleset::syntax::{milter_socket, MilterSocket};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest header field sent to a milter.
pub const MAX_FIELD: usize = 64 * 1024;
/// The most modifications one milter may ask for about one message.
pub const MAX_EDITS: usize = 256;
/// The most bytes of header fields one milter may add.
pub const MAX_ADDED: usize = 64 * 1024;

/// What the milter is told about the session and the message.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// The node's host name (`j`).
    pub hostname: &'a str,
    pub client: SocketAddr,
    /// The client's forward-confirmed reverse-DNS name, if any (else `[IP]`, as Postfix sends).
    pub client_name: Option<&'a str>,
    /// The node's own address on the connection (`{if_addr}`, `{daemon_addr}`).
    pub local: Option<SocketAddr>,
    pub helo: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The queue id (`i`): the session's id, which the node logs.
    pub queue_id: &'a str,
    pub user: Option<&'a str>,
    /// The TLS version, when the session is encrypted (`{tls_version}`).
    pub tls: Option<&'a str>,
}

/// A milter's verdict on the message, and the stage that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Continue at every stage, or accept: relay (with the edits).
    Pass,
    /// Reject, or a 5xx custom reply (its text as the milter sent it, validated by the caller).
    Reject {
        stage: &'static str,
        reply: Option<String>,
    },
    /// Tempfail, shutdown, or a 4xx custom reply.
    Tempfail {
        stage: &'static str,
        reply: Option<String>,
    },
    Discard {
        stage: &'static str,
    },
}

/// A modification asked for at the end of the message (what mtac makes of each is
/// [`super::edits`]' and [`super::judge`]'s business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// `SMFIR_ADDHEADER`: a field appended to the header section.
    AddHeader {
        name: String,
        value: String,
    },
    /// `SMFIR_INSHEADER`: a field inserted before the `index`th (0: at the top).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `SMFIR_CHGHEADER`: the `index`th field named `name` (from 1) changed, or deleted (empty
    /// value); added when there is no such field.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `SMFIR_REPLBODY`: the body replaced (its bytes went to a second spool file).
    ReplaceBody,
    AddRecipient(String),
    DeleteRecipient(String),
    ChangeSender,
    Quarantine(String),
}

/// The conversation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub verdict: Verdict,
    pub edits: Vec<Edit>,
}

/// Why a milter gave no verdict: its fail mode decides.
#[derive(Debug, thiserror::Error)]
pub enum MilterError {
    #[error("bad address {0}")]
    Address(String),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("I/O at {stage}: {error}")]
    Io { stage: &'static str, error: std::io::Error },
    #[error("no answer at {0} within the command timeout")]
    Timeout(&'static str),
    #[error("closed the connection at {0}")]
    Closed(&'static str),
    #[error("garbage at {stage}: {error}")]
    Codec { stage: &'static str, error: codec::CodecError },
    #[error("protocol at {stage}: {what}")]
    Protocol { stage: &'static str, what: String },
}

/// A connection to a milter.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Before waiting for replies: ask the kernel to acknowledge what arrives at once. libmilter
    /// writes each reply with its own write, and at the end of the message a milter sends
    /// several (its modifications, then its verdict): with Nagle on the milter's side the
    /// verdict waits for our ACK of the first, which Linux delays by 40 ms — 40 ms a message
    /// (measured: 22 messages/s on one session; BENCHMARKS.md).
    fn ack_now(&self) {}
}

impl Stream for tokio::net::TcpStream {
    fn ack_now(&self) {
        // Best effort: a socket that refuses the option only loses the optimisation.
        let _ = socket2::SockRef::from(self).set_tcp_quickack(true);
    }
}

impl Stream for tokio::net::UnixStream {}

impl Stream for Box<dyn Stream> {
    fn ack_now(&self) {
        (**self).ack_now();
    }
}

/// Connect to `address` within `timeout`.
pub async fn connect(address: &str, timeout: Duration) -> Result<Box<dyn Stream>, MilterError> {
    let socket = milter_socket(address).ok_or_else(|| MilterError::Address(address.to_owned()))?;
    let work = async {
        match socket {
            MilterSocket::Unix(path) => {
                tokio::net::UnixStream::connect(path).await.map(|s| Box::new(s) as Box<dyn Stream>)
            }
            MilterSocket::Inet { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream) as Box<dyn Stream>)
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result.map_err(MilterError::Connect),
        Err(_) => Err(MilterError::ConnectTimeout(timeout)),
    }
}

/// One conversation: the milter's end of a connection, with a timeout per answer. It lives as
/// long as the SMTP session ([`super::live`]): opened at the session's first MAIL FROM, told
/// each transaction's stages as they happen, aborted between transactions and told QUIT at the
/// end.
pub struct Conversation<S> {
    stream: S,
    out: Vec<u8>,
    input: Vec<u8>,
    command_timeout: Duration,
    /// The protocol flags the milter negotiated.
    protocol: u32,
    edits: Vec<Edit>,
    added: usize,
    /// The end of the message was answered: the milter waits for the next MAIL (libmilter
    /// takes no ABORT there).
    message_done: bool,
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Continue: on to the next stage.
    Next,
    /// Accept: nothing more to ask this milter about this message (at connect or HELO: about
    /// this session).
    Done,
    /// Skip the rest of the body.
    SkipBody,
    Verdict(Verdict),
}

impl<S: Stream> Conversation<S> {
    pub fn new(stream: S, command_timeout: Duration) -> Self {
        Conversation {
            stream,
            out: Vec::with_capacity(1024),
            input: Vec::new(),
            command_timeout,
            protocol: 0,
            edits: Vec::new(),
            added: 0,
            message_done: false,
        }
    }

    /// Whether the last message was taken to its end (no ABORT needed before the next MAIL).
    pub fn message_done(&self) -> bool {
        self.message_done
    }

    /// Negotiate, then the connect and HELO stages (the session's, told at its first MAIL).
    pub async fn open(&mut self, envelope: &Envelope<'_>) -> Result<Step, MilterError> {
        self.negotiate().await?;
        let name = envelope.client_name.map_or_else(|| format!("[{}]", envelope.client.ip()), str::to_owned);
        let mut macros = vec![
            ("j", envelope.hostname.to_owned()),
            ("{daemon_name}", "mtac".to_owned()),
            ("v", "mtac".to_owned()),
            ("_", format!("{name} [{}]", envelope.client.ip())),
            ("{client_addr}", envelope.client.ip().to_string()),
            ("{client_port}", envelope.client.port().to_string()),
            ("{client_name}", name.clone()),
            ("{client_ptr}", envelope.client_name.unwrap_or("unknown").to_owned()),
        ];
        if let Some(local) = envelope.local {
            macros.push(("{if_addr}", local.ip().to_string()));
            macros.push(("{daemon_addr}", local.ip().to_string()));
            macros.push(("{daemon_port}", local.port().to_string()));
        }
        let connect = Command::Connect { hostname: &name, address: Some(envelope.client) };
        match self.stage(b'C', &macros, &connect, protocol::NO_CONNECT, protocol::NR_CONNECT, "connect").await? {
            Step::Next | Step::SkipBody => {}
            step => return Ok(step),
        }
        let helo_macros: Vec<(&str, String)> =
            envelope.tls.map(|version| ("{tls_version}", version.to_owned())).into_iter().collect();
        let helo = Command::Helo(envelope.helo);
        self.stage(b'H', &helo_macros, &helo, protocol::NO_HELO, protocol::NR_HELO, "helo").await
    }

    /// MAIL FROM, with the transaction's macros.
    pub async fn mail(&mut self, envelope: &Envelope<'_>) -> Result<Step, MilterError> {
        self.edits.clear();
        self.added = 0;
        self.message_done = false;
        let mut mail_macros = vec![
            ("i", envelope.queue_id.to_owned()),
            ("{mail_addr}", envelope.sender.to_owned()),
            ("{mail_mailer}", "smtp".to_owned()),
        ];
        if let Some(user) = envelope.user {
            mail_macros.push(("{auth_authen}", user.to_owned()));
            mail_macros.push(("{auth_type}", "PLAIN".to_owned()));
        }
        let mail = Command::Mail(envelope.sender);
        self.stage(b'M', &mail_macros, &mail, protocol::NO_MAIL, protocol::NR_MAIL, "mail").await
    }

    /// One RCPT TO the policy accepted.
    pub async fn rcpt(&mut self, rcpt: &str) -> Result<Step, MilterError> {
        let rcpt_macros = vec![("{rcpt_addr}", rcpt.to_owned()), ("{rcpt_mailer}", "smtp".to_owned())];
        self.stage(b'R', &rcpt_macros, &Command::Rcpt(rcpt), protocol::NO_RCPT, protocol::NR_RCPT, "rcpt").await
    }

    /// The message, once spooled (from offset 0: mtac's Received header, then the sender's
    /// message): DATA, the header fields, end of headers, the body, end of message. A replaced
    /// body goes to `body` as it arrives; the other modifications are [`Conversation::take_edits`]'s.
    pub async fn message(
        &mut self,
        queue_id: &str,
        spool: &SpoolReader,
        body: &mut super::edits::ReplacementBody<'_>,
    ) -> Result<Verdict, MilterError> {
        let data_macros = vec![("i", queue_id.to_owned())];
        match self.stage(b'T', &data_macros, &Command::Data, protocol::NO_DATA, protocol::NR_DATA, "data").await? {
            Step::Next | Step::SkipBody => {}
            Step::Done => return Ok(Verdict::Pass),
            Step::Verdict(v) => return Ok(v),
        }
        let body_start = match self.headers(spool).await? {
            Ok(offset) => offset,
            Err(Step::Verdict(v)) => return Ok(v),
            Err(_) => return Ok(Verdict::Pass),
        };
        match self.body(spool, body_start).await? {
            Step::Next | Step::SkipBody => {}
            Step::Done => return Ok(Verdict::Pass),
            Step::Verdict(v) => return Ok(v),
        }
        self.send(&Command::EndOfMessage, "end-of-message").await?;
        let answer = self.answer("end-of-message", Some(body)).await?;
        self.message_done = true;
        match answer {
            Step::Verdict(v) => Ok(v),
            _ => Ok(Verdict::Pass),
        }
    }

    /// The modifications asked for at the end of the message, in the order asked.
    pub fn take_edits(&mut self) -> Vec<Edit> {
        self.added = 0;
        std::mem::take(&mut self.edits)
    }

    /// The transaction is over (RSET, a refused or finished message): the milter forgets it and
    /// waits for the session's next MAIL. No reply.
    pub async fn abort(&mut self) -> Result<(), MilterError> {
        self.edits.clear();
        self.send(&Command::Abort, "abort").await
    }

    /// The session is over.
    pub async fn quit(mut self) {
        if self.send(&Command::Quit, "quit").await.is_ok() {
            let _ = self.stream.shutdown().await;
        }
    }

    async fn negotiate(&mut self) -> Result<(), MilterError> {
        let offer =
            Command::OptionNegotiation { version: codec::VERSION, actions: action::ALL, protocol: protocol::OFFERED };
        self.send(&offer, "negotiate").await?;
        match self.read("negotiate").await? {
            Reply::OptionNegotiation { version, actions, protocol: flags } => {
                if !(2..=codec::VERSION).contains(&version) {
                    return Err(MilterError::Protocol { stage: "negotiate", what: format!("version {version}") });
                }
                if actions & !action::ALL != 0 || flags & !protocol::OFFERED != 0 {
                    return Err(MilterError::Protocol {
                        stage: "negotiate",
                        what: format!("asks for actions {actions:#x} and protocol {flags:#x}, more than offered"),
                    });
                }
                self.protocol = flags;
                Ok(())
            }
            other => Err(MilterError::Protocol { stage: "negotiate", what: format!("answered {other:?}") }),
        }
    }

    /// One stage: its macros, its command, and (unless the milter negotiated not to answer) its
    /// answer.
    async fn stage(
        &mut self,
        code: u8,
        macros: &[(&str, String)],
        command: &Command<'_>,
        skip: u32,
        no_reply: u32,
        stage: &'static str,
    ) -> Result<Step, MilterError> {
        if skip != 0 && self.protocol & skip != 0 {
            return Ok(Step::Next);
        }
        if !macros.is_empty() {
            Command::Macros { stage: code, pairs: macros }.encode(&mut self.out);
        }
        self.send(command, stage).await?;
        if no_reply != 0 && self.protocol & no_reply != 0 {
            return Ok(Step::Next);
        }
        self.answer(stage, None).await
    }

    /// Read until the final reply of a stage, collecting modifications at its end.
    async fn answer(
        &mut self,
        stage: &'static str,
        mut body: Option<&mut super::edits::ReplacementBody<'_>>,
    ) -> Result<Step, MilterError> {
        loop {
            let reply = self.read(stage).await?;
            let edit = match reply {
                Reply::Continue => return Ok(Step::Next),
                Reply::Accept => return Ok(Step::Done),
                Reply::Skip if stage == "body" => return Ok(Step::SkipBody),
                Reply::Reject => return Ok(Step::Verdict(Verdict::Reject { stage, reply: None })),
                Reply::Tempfail | Reply::Shutdown => {
                    return Ok(Step::Verdict(Verdict::Tempfail { stage, reply: None }))
                }
                Reply::Discard => return Ok(Step::Verdict(Verdict::Discard { stage })),
                Reply::ReplyCode(text) => {
                    let verdict = if text.starts_with('4') {
                        Verdict::Tempfail { stage, reply: Some(text) }
                    } else {
                        Verdict::Reject { stage, reply: Some(text) }
                    };
                    return Ok(Step::Verdict(verdict));
                }
                Reply::Progress => continue,
                Reply::AddHeader { name, value } => {
                    self.added += name.len() + value.len();
                    Edit::AddHeader { name, value }
                }
                Reply::InsertHeader { index, name, value } => {
                    self.added += name.len() + value.len();
                    Edit::InsertHeader { index, name, value }
                }
                Reply::ChangeHeader { index, name, value } => {
                    self.added += name.len() + value.len();
                    Edit::ChangeHeader { index, name, value }
                }
                Reply::ReplaceBody(bytes) => match body.as_deref_mut() {
                    Some(sink) => {
                        sink.write(&bytes).await;
                        Edit::ReplaceBody
                    }
                    None => Edit::ReplaceBody,
                },
                Reply::AddRcpt(address) => {
                    self.added += address.len();
                    Edit::AddRecipient(address)
                }
                Reply::DeleteRcpt(address) => {
                    self.added += address.len();
                    Edit::DeleteRecipient(address)
                }
                Reply::ChangeFrom(_) => Edit::ChangeSender,
                Reply::Quarantine(reason) => Edit::Quarantine(reason),
                other @ (Reply::Skip | Reply::OptionNegotiation { .. } | Reply::SetSymbolList) => {
                    return Err(MilterError::Protocol { stage, what: format!("answered {other:?}") })
                }
            };
            if stage != "end-of-message" {
                return Err(MilterError::Protocol {
                    stage,
                    what: "a modification before the end of the message".into(),
                });
            }
            // A replaced body arrives in many packets: one edit says it all.
            if self.edits.last() != Some(&edit) || edit != Edit::ReplaceBody {
                self.edits.push(edit);
            }
            if self.edits.len() > MAX_EDITS || self.added > MAX_ADDED {
                return Err(MilterError::Protocol { stage, what: "too many modifications".into() });
            }
        }
    }

    /// The header fields, one command each, then end of headers. `Ok(offset)` is where the body
    /// starts in the spool; `Err(step)` a stage that ended the conversation.
    async fn headers(&mut self, spool: &SpoolReader) -> Result<Result<u64, Step>, MilterError> {
        let mut fields = super::Fields::new(MAX_FIELD);
        let mut buf = vec![0u8; codec::BODY_CHUNK];
        let body_start = loop {
            let offset = fields.fed();
            let n = spool.read_at(offset, &mut buf).map_err(|error| MilterError::Io { stage: "header", error })?;
            match buf.get(..n) {
                Some(chunk) if n > 0 => fields.feed(chunk),
                _ => fields.finish(),
            }
            while let Some((name, value)) = fields.next_field() {
                let value = if self.protocol & protocol::HEADER_LEADING_SPACE != 0 {
                    value.as_slice()
                } else {
                    value.strip_prefix(b" ").unwrap_or(&value)
                };
                let command = Command::Header { name: &name, value };
                match self.stage(b'L', &[], &command, protocol::NO_HEADERS, protocol::NR_HEADER, "header").await? {
                    Step::Next | Step::SkipBody => {}
                    step => return Ok(Err(step)),
                }
            }
            if let Some(start) = fields.body_start() {
                break start;
            }
        };
        match self
            .stage(b'N', &[], &Command::EndOfHeaders, protocol::NO_EOH, protocol::NR_EOH, "end-of-headers")
            .await?
        {
            Step::Next | Step::SkipBody => Ok(Ok(body_start)),
            step => Ok(Err(step)),
        }
    }

    /// The body from `start`, in chunks of at most 64 KiB read from the spool.
    async fn body(&mut self, spool: &SpoolReader, start: u64) -> Result<Step, MilterError> {
        if self.protocol & protocol::NO_BODY != 0 {
            return Ok(Step::Next);
        }
        let mut buf = vec![0u8; codec::BODY_CHUNK];
        let mut offset = start;
        while offset < spool.len() {
            let n = spool.read_at(offset, &mut buf).map_err(|error| MilterError::Io { stage: "body", error })?;
            if n == 0 {
                break;
            }
            offset += n as u64;
            let chunk = Command::Body(buf.get(..n).unwrap_or_default());
            match self.stage(b'B', &[], &chunk, 0, protocol::NR_BODY, "body").await? {
                Step::Next => {}
                Step::SkipBody => return Ok(Step::Next),
                step => return Ok(step),
            }
        }
        Ok(Step::Next)
    }

    async fn send(&mut self, command: &Command<'_>, stage: &'static str) -> Result<(), MilterError> {
        command.encode(&mut self.out);
        let write = async {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await
        };
        let result = tokio::time::timeout(self.command_timeout, write).await;
        self.out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(MilterError::Io { stage, error }),
            Err(_) => Err(MilterError::Timeout(stage)),
        }
    }

    /// The next reply, within the command timeout (a progress report starts it again).
    async fn read(&mut self, stage: &'static str) -> Result<Reply, MilterError> {
        loop {
            match codec::decode(&self.input) {
                Ok(Some((reply, used))) => {
                    self.input.drain(..used);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(error) => return Err(MilterError::Codec { stage, error }),
            }
            let mut chunk = [0u8; 8192];
            self.stream.ack_now();
            let n = match tokio::time::timeout(self.command_timeout, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(MilterError::Closed(stage)),
                Ok(Ok(n)) => n,
                Ok(Err(error)) => return Err(MilterError::Io { stage, error }),
                Err(_) => return Err(MilterError::Timeout(stage)),
            };
            self.input.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

/// The final reply's kind, for logs and metrics.
pub fn verdict_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Pass => "continue",
        Verdict::Reject { .. } => "reject",
        Verdict::Tempfail { .. } => "tempfail",
        Verdict::Discard { .. } => "discard",
    }
}
