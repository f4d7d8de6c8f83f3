//! One session of the load generator: connect, EHLO, STARTTLS, EHLO, the messages, QUIT.

use crate::conversation::{Conversation, Stop};
use crate::{Settings, SetupError, Tally};
use rustls::client::Resumption;
use rustls::version::{TLS12, TLS13};
use rustls::{ClientConfig, HandshakeKind, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Everything a session needs, built once per run: the commands and the message are the same
/// bytes for every message, so the generator's own cost per message is its I/O.
pub struct Plan {
    target: SocketAddr,
    pub per_session: u64,
    timeout: Duration,
    /// None: plain SMTP.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    ehlo: Vec<u8>,
    mail: Vec<u8>,
    rcpt: Vec<u8>,
    /// Headers, body and the final ".".
    message: Vec<u8>,
}

/// How one message ended other than with a 250: the key it is counted under, and whether the
/// session can go on (after RSET) or is over.
struct Refusal {
    reason: String,
    session_over: bool,
}

impl From<Stop> for Refusal {
    fn from(stop: Stop) -> Refusal {
        Refusal { reason: stop.0, session_over: true }
    }
}

/// `step CODE`, unless the code is `expected` (or `also`).
fn expect(step: &str, code: u16, expected: u16, also: u16) -> Result<(), Refusal> {
    if code == expected || code == also {
        return Ok(());
    }
    // 421 is the server closing the session; the rest of it cannot be sent.
    Err(Refusal { reason: format!("{step} {code}"), session_over: code == 421 })
}

impl Plan {
    pub fn new(settings: &Settings) -> Result<Plan, SetupError> {
        let tls = if settings.plain { None } else { Some(connector(settings)?) };
        Ok(Plan {
            target: settings.target,
            per_session: settings.per_session,
            timeout: settings.timeout,
            tls,
            ehlo: format!("EHLO {}\r\n", settings.helo).into_bytes(),
            mail: format!("MAIL FROM:<{}>\r\n", settings.from).into_bytes(),
            rcpt: format!("RCPT TO:<{}>\r\n", settings.to).into_bytes(),
            message: message(&settings.from, &settings.to, settings.size),
        })
    }

    /// One connection carrying `count` messages; every one ends in `tally`, sent or failed.
    pub async fn session(&self, count: u64, tally: &mut Tally) {
        tally.sessions += 1;
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(self.target)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return tally.fail(&format!("connect: {:?}", e.kind()), count),
            Err(_) => return tally.fail("connect: timeout", count),
        };
        // Commands are single small writes awaiting a reply: Nagle would only add delay.
        if let Err(e) = tcp.set_nodelay(true) {
            return tally.fail(&format!("connect: nodelay: {:?}", e.kind()), count);
        }
        let mut plain = Conversation::new(tcp, self.timeout);
        let offers_starttls = match self.open(&mut plain).await {
            Ok(offers) => offers,
            Err(refusal) => return tally.fail(&refusal.reason, count),
        };
        let Some((connector, name)) = &self.tls else {
            return self.messages(plain, count, tally).await;
        };
        if !offers_starttls {
            return tally.fail("EHLO: no STARTTLS offered", count);
        }
        let upgraded = async {
            let reply = plain.command("STARTTLS", b"STARTTLS\r\n").await?;
            expect("STARTTLS", reply.code, 220, 220)?;
            let tcp = plain.into_stream()?;
            match tokio::time::timeout(self.timeout, connector.connect(name.clone(), tcp)).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(Refusal::from(Stop::at("TLS handshake", e))),
                Err(_) => Err(Refusal::from(Stop::at("TLS handshake", "timeout"))),
            }
        };
        let tls = match upgraded.await {
            Ok(tls) => tls,
            Err(refusal) => return tally.fail(&refusal.reason, count),
        };
        tally.tls_sessions += 1;
        if tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed) {
            tally.resumed += 1;
        }
        let mut secure = Conversation::new(tls, self.timeout);
        let hello = async {
            let reply = secure.command("EHLO after STARTTLS", &self.ehlo).await?;
            expect("EHLO after STARTTLS", reply.code, 250, 250)
        };
        match hello.await {
            Ok(()) => self.messages(secure, count, tally).await,
            Err(refusal) => tally.fail(&refusal.reason, count),
        }
    }

    /// Greeting and EHLO; whether EHLO offered STARTTLS.
    async fn open<S: AsyncRead + AsyncWrite + Unpin>(&self, plain: &mut Conversation<S>) -> Result<bool, Refusal> {
        let greeting = plain.reply("greeting").await?;
        expect("greeting", greeting.code, 220, 220)?;
        let ehlo = plain.command("EHLO", &self.ehlo).await?;
        expect("EHLO", ehlo.code, 250, 250)?;
        Ok(ehlo.starttls)
    }

    async fn messages<S: AsyncRead + AsyncWrite + Unpin>(&self, mut c: Conversation<S>, count: u64, tally: &mut Tally) {
        let mut left = count;
        while left > 0 {
            let outcome = self.message(&mut c).await;
            left -= 1;
            match outcome {
                Ok(()) => tally.sent += 1,
                Err(refusal) => {
                    tally.fail(&refusal.reason, 1);
                    let reset = if refusal.session_over { Err(()) } else { self.reset(&mut c).await };
                    if reset.is_err() {
                        return tally.fail(&format!("{} (session over)", refusal.reason), left);
                    }
                }
            }
        }
        // Every message is counted already; QUIT's answer changes nothing.
        let _ = c.command("QUIT", b"QUIT\r\n").await;
    }

    async fn message<S: AsyncRead + AsyncWrite + Unpin>(&self, c: &mut Conversation<S>) -> Result<(), Refusal> {
        let reply = c.command("MAIL", &self.mail).await?;
        expect("MAIL", reply.code, 250, 250)?;
        let reply = c.command("RCPT", &self.rcpt).await?;
        expect("RCPT", reply.code, 250, 251)?;
        let reply = c.command("DATA", b"DATA\r\n").await?;
        expect("DATA", reply.code, 354, 354)?;
        let reply = c.command("end of data", &self.message).await?;
        expect("end of data", reply.code, 250, 250)
    }

    async fn reset<S: AsyncRead + AsyncWrite + Unpin>(&self, c: &mut Conversation<S>) -> Result<(), ()> {
        match c.command("RSET", b"RSET\r\n").await {
            Ok(reply) if reply.code == 250 => Ok(()),
            _ => Err(()),
        }
    }
}

fn connector(settings: &Settings) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), SetupError> {
    let versions: &[&'static SupportedProtocolVersion] = match settings.tls_version.as_deref() {
        None => &[&TLS13, &TLS12],
        Some("1.3") => &[&TLS13],
        Some("1.2") => &[&TLS12],
        Some(other) => return Err(SetupError::TlsVersion(other.to_owned())),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(SetupError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(mtac_runtime::relay::AnyCertificate(provider)))
        .with_no_client_auth();
    if !settings.resume {
        config.resumption = Resumption::disabled();
    }
    let name = match &settings.server_name {
        Some(name) => ServerName::try_from(name.clone()).map_err(|_| SetupError::ServerName(name.clone()))?,
        None => ServerName::IpAddress(settings.target.ip().into()),
    };
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// The message as sent after DATA's 354: a few headers, `size` bytes of body in 80-byte lines
/// (none starts with a dot, so nothing needs stuffing), and the final ".".
fn message(from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut bytes = format!("From: <{from}>\r\nTo: <{to}>\r\nSubject: tls-load\r\n\r\n").into_bytes();
    let line = [b"x".repeat(78).as_slice(), b"\r\n"].concat();
    let mut left = size;
    while left >= line.len() {
        bytes.extend_from_slice(&line);
        left -= line.len();
    }
    if left > 0 {
        // A short last line: `left - 2` letters and its CRLF (at least one letter for 1 byte).
        bytes.extend(std::iter::repeat_n(b'x', left.saturating_sub(2).max(1)));
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b".\r\n");
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    #[test]
    fn the_body_is_the_size_asked_for_and_ends_the_data() {
        for size in [160, 4096] {
            let message = super::message("a@example.com", "b@example.net", size);
            let body_start = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let body = &message[body_start..message.len() - 3];
            assert_eq!(body.len(), size);
            assert!(message.ends_with(b"\r\n.\r\n"));
        }
    }
}
