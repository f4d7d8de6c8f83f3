//! The test back end: an in-process SMTP/LMTP server that records what it receives, optionally
//! offering STARTTLS (with a certificate the test makes) and CHUNKING (RFC 3030 BDAT).

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message as the back end received it (DATA unstuffed, without the final `.`; BDAT chunks
/// as sent).
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    /// It came over TLS (after STARTTLS).
    pub tls: bool,
    /// It came in BDAT chunks, not DATA.
    pub bdat: bool,
}

/// How the back end behaves. Recipients steer their own fate: a local part starting with
/// `reject5` gets 550, `defer4` gets 450.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub lmtp: bool,
    pub data_reply: String,
    pub hang_after_data: bool,
    pub reset_mid_data: bool,
    pub greeting_delay: Duration,
    /// Offer STARTTLS with this certificate chain and key (PEM files).
    pub starttls: Option<(String, String)>,
    /// Offer CHUNKING and take BDAT.
    pub chunking: bool,
    /// Offer PIPELINING (RFC 2920), as Postfix, Exchange and smtp-sink do.
    pub pipelining: bool,
    /// MAIL FROM's reply (default 250).
    pub mail_reply: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            lmtp: false,
            data_reply: "250 2.0.0 Ok: queued".to_owned(),
            hang_after_data: false,
            reset_mid_data: false,
            greeting_delay: Duration::ZERO,
            starttls: None,
            chunking: false,
            pipelining: true,
            mail_reply: None,
        }
    }
}

pub struct Sink {
    pub addr: SocketAddr,
    pub messages: Arc<Mutex<Vec<Received>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    /// Connections the back end accepted (pooling keeps this low).
    pub connections: Arc<Mutex<u32>>,
    /// Commands seen, upper-cased verb only, in order (STARTTLS, BDAT, DATA…).
    pub verbs: Arc<Mutex<Vec<String>>>,
    /// MAIL commands whose next command had arrived before MAIL was answered (pipelined).
    pub pipelined_mail: Arc<Mutex<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let connections = Arc::new(Mutex::new(0));
        let verbs = Arc::new(Mutex::new(Vec::new()));
        let pipelined_mail = Arc::new(Mutex::new(0));
        let (m, b, c, v, p) =
            (messages.clone(), behaviour.clone(), connections.clone(), verbs.clone(), pipelined_mail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                *c.lock().unwrap() += 1;
                tokio::spawn(sink_session(stream, m.clone(), b.clone(), v.clone(), p.clone()));
            }
        });
        Sink { addr, messages, behaviour, connections, verbs, pipelined_mail, task }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    pub fn verbs(&self) -> Vec<String> {
        self.verbs.lock().unwrap().clone()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn sink_session(
    stream: TcpStream,
    messages: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    verbs: Arc<Mutex<Vec<String>>>,
    pipelined_mail: Arc<Mutex<u32>>,
) {
    let b = behaviour.lock().unwrap().clone();
    tokio::time::sleep(b.greeting_delay).await;
    let mut stream: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    if stream.get_mut().write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let (mut from, mut rcpts) = (String::new(), Vec::<String>::new());
    let mut tls = false;
    // A MAIL FROM was accepted and no RSET or message has ended the transaction since.
    let mut in_transaction = false;
    let mut chunks: Vec<u8> = Vec::new();
    loop {
        let mut line = String::new();
        match stream.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let upper = line.to_ascii_uppercase();
        verbs.lock().unwrap().push(upper.split_whitespace().next().unwrap_or("").to_owned());
        let b = behaviour.lock().unwrap().clone();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
            let mut reply = "250-sink\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n".to_owned();
            if b.starttls.is_some() && !tls {
                reply.push_str("250-STARTTLS\r\n");
            }
            if b.chunking {
                reply.push_str("250-CHUNKING\r\n");
            }
            if b.pipelining {
                reply.push_str("250-PIPELINING\r\n");
            }
            reply + "250 SIZE 100000000\r\n"
        } else if upper.starts_with("STARTTLS") && b.starttls.is_some() && !tls {
            let (cert, key) = b.starttls.clone().unwrap();
            if stream.get_mut().write_all(b"220 2.0.0 Ready to start TLS\r\n").await.is_err() {
                return;
            }
            // Whatever was pipelined behind STARTTLS is dropped with the buffer (RFC 3207).
            let plain = stream.into_inner();
            let Ok(encrypted) = acceptor(&cert, &key).accept(plain).await else { return };
            stream = BufReader::new(Box::new(encrypted));
            tls = true;
            (from, rcpts) = (String::new(), Vec::new());
            in_transaction = false;
            continue;
        } else if upper.starts_with("MAIL FROM:") {
            if !stream.buffer().is_empty() {
                *pipelined_mail.lock().unwrap() += 1;
            }
            if let Some(refusal) = &b.mail_reply {
                in_transaction = false;
                format!("{refusal}\r\n")
            } else {
                in_transaction = true;
                from = between(&line).to_owned();
                rcpts.clear();
                chunks.clear();
                "250 2.1.0 Ok\r\n".to_owned()
            }
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = between(&line).to_owned();
            if !in_transaction {
                "503 5.5.1 Error: need MAIL command\r\n".to_owned()
            } else if rcpt.starts_with("reject5") {
                "550 5.1.1 <rcpt>: Recipient address rejected: User unknown\r\n".to_owned()
            } else if rcpt.starts_with("defer4") {
                "450 4.2.0 Mailbox busy\r\n".to_owned()
            } else {
                rcpts.push(rcpt);
                "250 2.1.5 Ok\r\n".to_owned()
            }
        } else if upper.starts_with("BDAT ") && b.chunking {
            let mut words = upper.split_whitespace().skip(1);
            let Some(size) = words.next().and_then(|n| n.parse::<usize>().ok()) else { return };
            let last = words.next() == Some("LAST");
            let mut chunk = vec![0u8; size];
            if stream.read_exact(&mut chunk).await.is_err() {
                return;
            }
            chunks.extend_from_slice(&chunk);
            if !last {
                format!("250 2.0.0 {size} octets received\r\n")
            } else {
                let data = std::mem::take(&mut chunks);
                in_transaction = false;
                finish(&b, &messages, Received { from: from.clone(), rcpts: rcpts.clone(), data, tls, bdat: true })
                    .await
            }
        } else if upper.starts_with("DATA") {
            if stream.get_mut().write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut raw = Vec::new();
            loop {
                let mut chunk = Vec::new();
                match stream.read_until(b'\n', &mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if b.reset_mid_data && raw.len() > 10 {
                    return;
                }
                if chunk == b".\r\n" && (raw.is_empty() || raw.ends_with(b"\r\n")) {
                    break;
                }
                raw.extend_from_slice(&chunk);
            }
            let data = unstuff(&raw);
            in_transaction = false;
            finish(&b, &messages, Received { from: from.clone(), rcpts: rcpts.clone(), data, tls, bdat: false }).await
        } else if upper.starts_with("RSET") {
            in_transaction = false;
            chunks.clear();
            "250 2.0.0 Ok\r\n".to_owned()
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 Ok\r\n".to_owned()
        } else if upper.starts_with("QUIT") {
            let _ = stream.get_mut().write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "502 5.5.2 Error: command not recognized\r\n".to_owned()
        };
        if stream.get_mut().write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The verdict on a whole message: recorded when the behaviour's reply is a 2xx.
async fn finish(b: &Behaviour, messages: &Mutex<Vec<Received>>, message: Received) -> String {
    if b.hang_after_data {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let count = message.rcpts.len();
    if b.data_reply.starts_with('2') {
        messages.lock().unwrap().push(message);
    }
    if b.lmtp {
        (0..count).map(|_| format!("{}\r\n", b.data_reply)).collect()
    } else {
        format!("{}\r\n", b.data_reply)
    }
}

fn between(line: &str) -> &str {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line.get(start..end).unwrap_or("")
}

fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut at_start = true;
    for &b in raw {
        if at_start && b == b'.' {
            at_start = false;
            continue;
        }
        out.push(b);
        at_start = b == b'\n';
    }
    out
}
