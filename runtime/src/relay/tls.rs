//! STARTTLS toward a back end (RFC 3207 as a client): the per-back-end rustls configuration,
//! built when the ruleset is loaded, and [`BackendStream`], one back-end connection plain or
//! encrypted.
//!
//! `tls="required"` verifies the chain against the `ca=` file or the system's roots (read by
//! rustls-native-certs: `SSL_CERT_FILE`, then the distribution's bundle) and the expected name,
//! and there is no way from a failed check to clear text: the back end is skipped, and when none
//! is left the client gets a 451. `tls="opportunistic"` encrypts without verifying: against a
//! passive listener only, which is what Postfix's `may` buys, and anyone able to break a
//! handshake could as well have removed STARTTLS from the EHLO reply.

use mtac_ruleset::model::BackendTls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a back end's `tls=` became, ready to connect with.
#[derive(Clone)]
pub enum Starttls {
    Off,
    Opportunistic { connector: tokio_rustls::TlsConnector, name: ServerName<'static> },
    Required { connector: tokio_rustls::TlsConnector, name: ServerName<'static> },
}

impl Starttls {
    /// Build the client configuration for one back end at `address` (`host:port`). Reads the CA
    /// file or the system's roots: called when a ruleset is loaded, never per message.
    pub fn load(tls: &BackendTls, address: &str) -> Result<(Starttls, Option<(String, blake3::Hash)>), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        match tls {
            BackendTls::Off => Ok((Starttls::Off, None)),
            BackendTls::Opportunistic => {
                let config = builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                    .with_no_client_auth();
                // The name only feeds SNI here; an IP address sends none.
                let name = server_name(host_of(address))
                    .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                Ok((Starttls::Opportunistic { connector, name }, None))
            }
            BackendTls::Required { ca, name } => {
                let mut roots = rustls::RootCertStore::empty();
                let stamp = match ca {
                    Some(path) => {
                        let pem = std::fs::read(path).map_err(|e| format!("CA file {path}: {e}"))?;
                        for certificate in CertificateDer::pem_slice_iter(&pem) {
                            let certificate = certificate.map_err(|e| format!("CA file {path}: {e}"))?;
                            roots.add(certificate).map_err(|e| format!("CA file {path}: {e}"))?;
                        }
                        Some((path.clone(), blake3::hash(&pem)))
                    }
                    None => {
                        let found = rustls_native_certs::load_native_certs();
                        // A bundle with a few odd entries is still a bundle: keep what parses.
                        let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                        if added == 0 {
                            let why = found.errors.first().map(ToString::to_string).unwrap_or_default();
                            return Err(format!("no system root certificates to verify {address} with {why}"));
                        }
                        None
                    }
                };
                if roots.is_empty() {
                    return Err(format!("no certificate to verify {address} with"));
                }
                let config = builder.with_root_certificates(roots).with_no_client_auth();
                let name = server_name(name).ok_or_else(|| format!("`{name}` is not a name to verify"))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                Ok((Starttls::Required { connector, name }, stamp))
            }
        }
    }
}

fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).ok()
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// `tls="opportunistic"`: any certificate is accepted, but the handshake's signatures are
/// still checked, so the session key belongs to whoever holds the presented certificate's key.
/// (Public for the benchmarks' clients, whose verification cost is not the node's.)
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One back-end connection, before or after STARTTLS.
pub enum BackendStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while upgrading; never read or written.
    Gone,
}

impl BackendStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, BackendStream::Tls(_))
    }

    /// Ask the kernel to acknowledge what has arrived now, not after its delayed-ACK wait (up
    /// to 40 ms on a connection it sees as interactive, as a pooled one is): a back end with
    /// Nagle on holds its next write until our ACK of the last one arrives.
    pub fn ack_now(&self) {
        let tcp = match self {
            BackendStream::Plain(tcp) => tcp,
            BackendStream::Tls(tls) => tls.get_ref().0,
            BackendStream::Gone => return,
        };
        // Best effort: a socket that refuses the option only loses the optimisation.
        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    }

    /// Run the client handshake on a plain stream, after the back end's `220` to STARTTLS.
    pub async fn upgrade(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    ) -> io::Result<()> {
        let BackendStream::Plain(tcp) = std::mem::replace(self, BackendStream::Gone) else {
            return Err(io::Error::other("TLS is already active"));
        };
        let tls = connector.connect(name, tcp).await?;
        *self = BackendStream::Tls(Box::new(tls));
        Ok(())
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the back end connection was lost during a TLS handshake")
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            BackendStream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            BackendStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
