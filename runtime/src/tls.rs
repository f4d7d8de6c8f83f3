//! TLS for SMTP: STARTTLS (RFC 3207) and implicit TLS (RFC 8314), with rustls and ring.
//!
//! Each farm with `tls` gets one `rustls::ServerConfig` built when the ruleset is loaded: TLS 1.2
//! and 1.3 only, rustls' modern cipher suites only (no CBC, no RSA key exchange), the
//! certificate chain and key read from their PEM files. The config is part of the ruleset
//! snapshot, so a reload — or a certificate renewed on disk, which the node notices by a hash
//! of the files' contents — swaps it in for new sessions without touching sessions already in
//! TLS. Not by modification times: a file in the Nix store (and one copied with `cp -p`, or
//! unpacked from an archive) carries a fixed mtime, so a renewal can keep the old one.
//!
//! [`SmtpStream`] is one connection, plain or encrypted: the session driver reads and writes it
//! without caring which. Upgrading (`starttls`) consumes the plain stream; anything the client
//! pipelined behind STARTTLS is discarded by the driver before the handshake (the
//! CVE-2011-0411 class of command injection).

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a farm's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A farm's TLS settings, loaded.
#[derive(Clone)]
pub struct FarmTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The files and a BLAKE3 hash of what was read from them, to notice a renewal (`None`:
    /// unreadable).
    stamps: Vec<(String, Option<blake3::Hash>)>,
}

/// The hash of a file's contents, `None` if it cannot be read.
fn stamp(path: &str) -> Option<blake3::Hash> {
    std::fs::read(path).ok().map(|bytes| blake3::hash(&bytes))
}

impl FarmTls {
    /// Read the farm's chain and key, and those of its `sni` names, and build the server
    /// configuration.
    pub fn load(tls: &mtac_ruleset::model::Tls) -> Result<FarmTls, TlsError> {
        let provider = Arc::new(server_provider());
        let mut stamps = Vec::new();
        let default = certified_key(&tls.certificate, &tls.key, &provider, &mut stamps)?;
        let mut by_name = Vec::with_capacity(tls.sni.len());
        for sni in &tls.sni {
            by_name.push((sni.name.clone(), certified_key(&sni.certificate, &sni.key, &provider, &mut stamps)?));
        }
        let resolver = SniResolver { default, by_name };
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        // Our order, AES-128-GCM first (`server_provider`): clients (OpenSSL's, rustls') list
        // AES-256 first, which buys nothing against a 128-bit key exchange and costs more.
        config.ignore_client_order = true;
        // One TLS 1.3 ticket per handshake, not rustls' two: a sending MTA resumes with one
        // (Postfix caches one session per destination), and each ticket is sealed and stored.
        config.send_tls13_tickets = 1;
        Ok(FarmTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), stamps })
    }

    /// Whether a certificate or key file holds something else than what was loaded.
    pub fn changed_on_disk(&self) -> bool {
        self.stamps.iter().any(|(path, hash)| stamp(path) != *hash)
    }
}

/// ring's provider with its cipher suites in the node's order of preference: for each version,
/// AES-128-GCM, then AES-256-GCM, then ChaCha20-Poly1305 (Mozilla's "modern" order; every
/// suite is AEAD with forward secrecy, as before). Only the order changes, never the set.
fn server_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as Suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let rank = |suite: Suite| match suite {
        Suite::TLS13_AES_128_GCM_SHA256
        | Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        Suite::TLS13_AES_256_GCM_SHA384
        | Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    };
    // Stable: TLS 1.3's suites stay ahead of TLS 1.2's.
    provider.cipher_suites.sort_by_key(|s| (s.version() != &rustls::version::TLS13, rank(s.suite())));
    provider
}

/// One chain and key, read once each (what is parsed is exactly what is hashed into `stamps`).
fn certified_key(
    certificate: &str,
    key_file: &str,
    provider: &rustls::crypto::CryptoProvider,
    stamps: &mut Vec<(String, Option<blake3::Hash>)>,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let cert_error = |message: String| TlsError::Certificate { path: certificate.to_owned(), message };
    let cert_pem = std::fs::read(certificate).map_err(|e| cert_error(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&cert_pem).collect::<Result<_, _>>().map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no certificate in it".into()));
    }
    let key_error = |message: String| TlsError::Key { path: key_file.to_owned(), message };
    let key_pem = std::fs::read(key_file).map_err(|e| key_error(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_error(e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, provider)?;
    stamps.push((certificate.to_owned(), Some(blake3::hash(&cert_pem))));
    stamps.push((key_file.to_owned(), Some(blake3::hash(&key_pem))));
    Ok(Arc::new(certified))
}

/// The farm's certificates by the name a client asks for (SNI): an exact name first, then a
/// `*.parent` one for a name one label under it; the farm's own for any other name and for
/// clients that ask for none (most SMTP clients).
#[derive(Debug)]
struct SniResolver {
    default: Arc<rustls::sign::CertifiedKey>,
    by_name: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
}

impl SniResolver {
    fn for_name(&self, asked: Option<&str>) -> Arc<rustls::sign::CertifiedKey> {
        let Some(asked) = asked.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        let wildcard = asked.split_once('.').map(|(_, parent)| format!("*.{parent}"));
        let found = self
            .by_name
            .iter()
            .find(|(name, _)| *name == asked)
            .or_else(|| wildcard.and_then(|w| self.by_name.iter().find(|(name, _)| *name == w)));
        found.map_or_else(|| self.default.clone(), |(_, key)| key.clone())
    }
}

impl rustls::server::ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.for_name(hello.server_name()))
    }
}

/// One SMTP connection, before or after TLS.
pub enum SmtpStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Only while upgrading; never read or written.
    Gone,
}

impl SmtpStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, SmtpStream::Tls(_))
    }

    /// "TLS1.3 TLS13_AES_256_GCM_SHA384", for the Received header and the logs.
    pub fn tls_description(&self) -> Option<String> {
        let SmtpStream::Tls(tls) = self else { return None };
        let (_, connection) = tls.get_ref();
        let version = connection.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLS1.3".to_owned(),
            rustls::ProtocolVersion::TLSv1_2 => "TLS1.2".to_owned(),
            other => format!("{other:?}"),
        });
        let suite = connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
        Some(format!("{} {}", version.unwrap_or_default(), suite.unwrap_or_default()))
    }

    /// Run the TLS handshake on a plain stream (after `220 Ready to start TLS`, or at once on
    /// an implicit-TLS listener).
    pub async fn upgrade(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let SmtpStream::Plain(tcp) = std::mem::replace(self, SmtpStream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = acceptor.accept(tcp).await?;
        *self = SmtpStream::Tls(Box::new(tls));
        Ok(())
    }

    /// Ready when a read would return something (bytes, the end of the stream or an error),
    /// without lending the stream a buffer: an idle session waits here and holds none. A poll
    /// function, not a future, so the waiting session keeps no readiness future either: the
    /// waker is kept by the socket's registration.
    ///
    /// Under TLS the socket is not the only source: rustls may already hold decrypted bytes
    /// (a client's pipelined commands that did not fit the last read) or a close_notify, which
    /// the socket will never signal again; those count as readable at once.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            SmtpStream::Plain(tcp) => tcp.poll_read_ready(cx),
            SmtpStream::Tls(tls) => {
                let (tcp, connection) = tls.get_mut();
                // tokio-rustls processes every record it reads at once, so this finds nothing
                // new; it reports what rustls holds. An error is left for the read to report.
                match connection.process_new_packets() {
                    Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
                        tcp.poll_read_ready(cx)
                    }
                    _ => Poll::Ready(Ok(())),
                }
            }
            SmtpStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection was lost during a TLS handshake")
}

impl AsyncRead for SmtpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            SmtpStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            SmtpStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            SmtpStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            SmtpStream::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Issue 14: a renewed certificate with the old modification time (a Nix store file keeps
    /// mtime 1) went unnoticed. Two key pairs swapped in with identical mtimes.
    #[test]
    fn a_renewal_that_keeps_the_modification_time_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let out = std::process::Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "2", "-subj", "/CN=mx.test.example", "-keyout"])
                .arg(dir.path().join(format!("{name}.key")))
                .arg("-out")
                .arg(dir.path().join(format!("{name}.pem")))
                .output()
                .expect("the openssl command");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        };
        make("old");
        make("new");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let epoch_plus_one = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1);
        let put = |from: &str| {
            for (src, dst) in [(format!("{from}.pem"), &cert), (format!("{from}.key"), &key)] {
                std::fs::copy(dir.path().join(src), dst).unwrap();
                std::fs::File::options().write(true).open(dst).unwrap().set_modified(epoch_plus_one).unwrap();
            }
        };
        put("old");
        let settings = mtac_ruleset::model::Tls {
            certificate: cert.to_str().unwrap().to_owned(),
            key: key.to_str().unwrap().to_owned(),
            required: false,
            name: None,
            sni: Vec::new(),
        };
        let tls = FarmTls::load(&settings).unwrap();
        assert!(!tls.changed_on_disk());
        put("new");
        assert!(tls.changed_on_disk(), "same mtime, other certificate: must reload");
        put("old");
        assert!(!tls.changed_on_disk(), "the same bytes again are no change");
    }
}
