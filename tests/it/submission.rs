//! The submission farm (issue 6): STARTTLS and implicit TLS with a real rustls client, AUTH
//! PLAIN and LOGIN inside TLS only, against the compiled credential table and a real slapd,
//! sender ownership, the STARTTLS injection attack, failed attempts banning the client.

use crate::support::{code, Behaviour, Sink, Slapd, TestNode};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// A throwaway CA and a certificate for mx.test.example it signed, made with the openssl command.
/// Returns the server's chain and key files; the CA is `ca.pem` beside them.
pub(crate) fn certificate(dir: &Path) -> (String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-days", "2", "-subj", "/CN=mtac test CA", "-keyout", "ca.key", "-out", "ca.pem"],
    ]
    .concat());
    run(&[&["req"][..], &ec, &["-subj", "/CN=mx.test.example", "-keyout", "key.pem", "-out", "leaf.csr"]].concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:mx.test.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
        .into_iter()
        .chain(["-extfile", "leaf.ext", "-out", "cert.pem"])
        .collect::<Vec<_>>());
    (dir.join("cert.pem").to_string_lossy().into_owned(), dir.join("key.pem").to_string_lossy().into_owned())
}

/// A rustls client that trusts the test CA (beside the server's certificate).
pub(crate) fn connector(cert: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let ca = Path::new(cert).with_file_name("ca.pem");
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

pub(crate) fn phc(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"mtac-test-salt!!").unwrap();
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).unwrap().to_string()
}

pub(crate) fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A line-oriented client over any stream (plain or TLS).
pub(crate) struct Smtp<S> {
    pub(crate) stream: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Smtp<S> {
    pub(crate) async fn reply(&mut self) -> String {
        crate::support::read_reply(&mut self.stream).await
    }

    pub(crate) async fn cmd(&mut self, line: &str) -> String {
        self.stream.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        self.reply().await
    }
}

pub(crate) fn policy(cert: &str, key: &str, auth: &str, extra_listen: &str) -> String {
    format!(
        r#"hostname "mx.test.example"
spool "{{dir}}/spool"
farm "users" kind="submission" {{
    listen "127.0.0.1:0"
    {extra_listen}
    local-domains "example.test"
    tls certificate="{cert}" key="{key}"
    {auth}
    relay {{
        backend "smtp://{{backend}}"
    }}
}}
"#
    )
}

pub(crate) async fn starttls(
    addr: SocketAddr,
    cert: &str,
) -> Smtp<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut plain = Smtp { stream: BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap()) };
    assert_eq!(code(&plain.reply().await), 220);
    plain.cmd("EHLO laptop.example.org").await;
    assert!(plain.cmd("STARTTLS").await.starts_with("220 2.0.0"));
    let tcp = plain.stream.into_inner();
    let tls = connector(cert).connect(ServerName::try_from("mx.test.example").unwrap(), tcp).await.unwrap();
    Smtp { stream: BufReader::new(tls) }
}

/// Issue 14, item 8: with `auth header-from="owned"`, an authenticated user's message must carry
/// a From header the user may send as (the MAIL FROM rule); a forged colleague, a second From
/// field or none at all is refused with 550 5.7.1 after DATA, and nothing reaches the back end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_the_header_from_must_belong_to_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let auth = format!(
        r#"auth header-from="owned" {{
        user "alice" hash="{}"
        may-send-as "alice" "sales@example.test"
    }}"#,
        phc("correct horse")
    );
    let node = TestNode::start(&policy(&cert, &key, &auth, ""), Some(sink.addr)).await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    let mut send = async |from_fields: &str| {
        assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>").await), 250);
        assert_eq!(code(&s.cmd("RCPT TO:<friend@elsewhere.example>").await), 250);
        assert_eq!(code(&s.cmd("DATA").await), 354);
        let message = format!("{from_fields}Subject: hi\r\n\r\nhello\r\n.\r\n");
        s.stream.get_mut().write_all(message.as_bytes()).await.unwrap();
        s.reply().await
    };
    for owned in ["From: Alice <alice@example.test>\r\n", "From: \"Sales\" <SALES@example.test>\r\n"] {
        let r = send(owned).await;
        assert_eq!(code(&r), 250, "{owned}: {r}");
    }
    for forged in [
        "From: The CEO <ceo@example.test>\r\n",
        "From: alice@example.test, ceo@example.test\r\n",
        "From: alice@example.test\r\nFrom: ceo@example.test\r\n",
        "",
    ] {
        let r = send(forged).await;
        assert!(r.starts_with("550 5.7.1 Message rejected: From header not owned"), "{forged:?}: {r}");
    }
    assert_eq!(sink.messages().len(), 2, "only the owned messages were relayed");
}

/// The node's cipher order wins over the client's: rustls' client (like OpenSSL's) lists
/// AES-256-GCM first, and gets AES-128-GCM (the cheaper suite, as strong as the key exchange),
/// over TLS 1.3 and over TLS 1.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_prefers_aes_128_gcm_whatever_the_client_lists_first() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let auth = format!(r#"auth {{ user "alice" hash="{}" }}"#, phc("correct horse"));
    let node = TestNode::start(&policy(&cert, &key, &auth, ""), Some(sink.addr)).await;
    let client = starttls(node.addr, &cert).await;
    let (_, session) = client.stream.get_ref().get_ref();
    assert_eq!(
        session.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(Path::new(&cert).with_file_name("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut plain = Smtp { stream: BufReader::new(tokio::net::TcpStream::connect(node.addr).await.unwrap()) };
    plain.reply().await;
    plain.cmd("EHLO laptop.example.org").await;
    assert!(plain.cmd("STARTTLS").await.starts_with("220 2.0.0"));
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("mx.test.example").unwrap(), plain.stream.into_inner())
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
    assert_eq!(suite, Some(rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_needs_tls_then_auth_and_the_user_owns_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    std::fs::write(dir.path().join("senders.txt"), "# user  addresses\nalice  helpdesk@example.test\n").unwrap();
    let auth = format!(
        r#"auth max-failures=5 cache="1h" {{
        user "alice" hash="{}"
        may-send-as "alice" "Sales@example.test" "alice.smith@partner.example"
        may-send-as file="{}"
    }}"#,
        phc("correct horse"),
        dir.path().join("senders.txt").display()
    );
    // The senders file lives outside the node's policy directory: allowed, as `--allow-dir` would.
    let options = mtac_compiler::Options { allowed_dirs: vec![dir.path().to_path_buf()], ..Default::default() };
    let node = TestNode::start_with(&policy(&cert, &key, &auth, ""), Some(sink.addr), options).await;

    // In clear text: STARTTLS offered, AUTH neither offered nor accepted, no mail.
    let mut plain = Smtp { stream: BufReader::new(tokio::net::TcpStream::connect(node.addr).await.unwrap()) };
    assert_eq!(code(&plain.reply().await), 220);
    let ehlo = plain.cmd("EHLO laptop.example.org").await;
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"), "{ehlo}");
    let r = plain.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await;
    assert!(r.starts_with("538 5.7.11"), "AUTH refused before TLS: {r}");
    let r = plain.cmd("MAIL FROM:<alice@example.test>").await;
    assert!(r.starts_with("530 5.7.0"), "no mail before TLS: {r}");

    // The injection attack: a command pipelined behind STARTTLS, in clear text, must be
    // discarded, not run inside the TLS session.
    plain.stream.get_mut().write_all(b"STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n").await.unwrap();
    assert!(plain.reply().await.starts_with("220 2.0.0"));
    let tcp = plain.stream.into_inner();
    let tls = connector(&cert).connect(ServerName::try_from("mx.test.example").unwrap(), tcp).await.unwrap();
    let mut s = Smtp { stream: BufReader::new(tls) };
    let ehlo = s.cmd("EHLO laptop.example.org").await;
    assert!(ehlo.starts_with("250-mx.test.example"), "the first reply in TLS is EHLO's, nothing injected: {ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"), "{ehlo}");
    let r = s.cmd("MAIL FROM:<alice@example.test>").await;
    assert_eq!(code(&r), 250, "{r}");
    let r = s.cmd("RCPT TO:<friend@elsewhere.example>").await;
    assert!(r.starts_with("530 5.7.0") || r.starts_with("554"), "no relay without AUTH: {r}");
    s.cmd("RSET").await;

    // Wrong password, then LOGIN with the right one.
    let r = s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0wrong"))).await;
    assert!(r.starts_with("535 5.7.8"), "{r}");
    assert!(s.cmd("AUTH LOGIN").await.starts_with("334 VXNlcm5hbWU6"));
    assert!(s.cmd(&b64("alice")).await.starts_with("334 UGFzc3dvcmQ6"));
    let r = s.cmd(&b64("correct horse")).await;
    assert!(r.starts_with("235 2.7.0"), "{r}");

    // Sender ownership: alice may send as alice@ a local domain and as the addresses the policy
    // gave her (inline and from a file, any case), not as bob.
    let r = s.cmd("MAIL FROM:<bob@example.test>").await;
    assert!(r.starts_with("553 5.7.1"), "{r}");
    for alias in ["sales@EXAMPLE.test", "alice.smith@partner.example", "helpdesk@example.test"] {
        let r = s.cmd(&format!("MAIL FROM:<{alias}>")).await;
        assert_eq!(code(&r), 250, "{alias}: {r}");
        s.cmd("RSET").await;
    }
    let r = s.cmd("MAIL FROM:<bob.smith@partner.example>").await;
    assert!(r.starts_with("553 5.7.1"), "{r}");
    assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>").await), 250);
    let r = s.cmd("RCPT TO:<friend@elsewhere.example>").await;
    assert_eq!(code(&r), 250, "authenticated users relay: {r}");
    assert_eq!(code(&s.cmd("DATA").await), 354);
    s.stream.get_mut().write_all(b"Subject: hi\r\n\r\nhello\r\n.\r\n").await.unwrap();
    let r = s.reply().await;
    assert_eq!(code(&r), 250, "{r}");
    s.cmd("QUIT").await;
    let relayed = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(relayed.contains("with ESMTPSA id"), "{relayed}");
    assert!(relayed.contains("(using TLS1.3 TLS13_"), "{relayed}");

    let m = node.metrics().await;
    assert_eq!(crate::support::sample(&m, r#"mtac_auth_total{farm="users",outcome="success"}"#), 1.0, "{m}");
    assert_eq!(crate::support::sample(&m, r#"mtac_auth_total{farm="users",outcome="failure"}"#), 1.0);
    assert_eq!(crate::support::sample(&m, "mtac_auth_cache_hits_total"), 0.0);

    // `cache="1h"`: the client's next login is answered without hashing; a wrong password, or
    // another case of it, never matches the cached login.
    let mut again = starttls(node.addr, &cert).await;
    again.cmd("EHLO laptop.example.org").await;
    let r = again.cmd(&format!("AUTH PLAIN {}", b64("\0ALICE\0correct horse"))).await;
    assert!(r.starts_with("235"), "{r}");
    let mut wrong = starttls(node.addr, &cert).await;
    wrong.cmd("EHLO laptop.example.org").await;
    let r = wrong.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0Correct horse"))).await;
    assert!(r.starts_with("535"), "{r}");
    let m = node.metrics().await;
    assert_eq!(crate::support::sample(&m, "mtac_auth_cache_hits_total"), 1.0, "{m}");
    assert_eq!(crate::support::sample(&m, r#"mtac_auth_total{farm="users",outcome="success"}"#), 2.0);
    assert_eq!(crate::support::sample(&m, r#"mtac_auth_total{farm="users",outcome="failure"}"#), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_and_failed_attempts_ban_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let auth = format!(r#"auth max-failures=2 {{ user "alice" hash="{}" }}"#, phc("correct horse"));
    let listen = format!(r#"listen "127.0.0.1:{port}" tls="implicit""#);
    let node = TestNode::start(&policy(&cert, &key, &auth, &listen), Some(sink.addr)).await;

    // Port "465": TLS from the first byte, the greeting inside it.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = connector(&cert).connect(ServerName::try_from("mx.test.example").unwrap(), tcp).await.unwrap();
    let mut s = Smtp { stream: BufReader::new(tls) };
    assert!(s.reply().await.starts_with("220 mx.test.example"));
    let ehlo = s.cmd("EHLO laptop.example.org").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    s.cmd("QUIT").await;

    // Two failures: the second closes the session and bans the address.
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0guess1"))).await.starts_with("535"));
    let r = s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0guess2"))).await;
    assert!(r.starts_with("421"), "{r}");
    let mut again = Smtp { stream: BufReader::new(tokio::net::TcpStream::connect(node.addr).await.unwrap()) };
    let r = again.reply().await;
    assert!(r.starts_with("521 5.3.2"), "banned after max-failures: {r}");
}

// ----- LDAP ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_checks_passwords_and_a_directory_down_gives_454() {
    let Some(mut slapd) = Slapd::start().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let auth = format!(
        r#"auth {{ ldap url="ldap://127.0.0.1:{}" bind-dn="uid={{user}},ou=people,dc=example,dc=test" }}"#,
        slapd.port
    );
    let node = TestNode::start(&policy(&cert, &key, &auth, ""), Some(sink.addr)).await;
    let attempt = |password: &'static str| {
        let cert = cert.clone();
        async move {
            let mut s = starttls(node.addr, &cert).await;
            s.cmd("EHLO laptop.example.org").await;
            let r = s.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0carol\0{password}")))).await;
            s.cmd("QUIT").await;
            r
        }
    };
    assert!(attempt("ldap-pass").await.starts_with("235"), "a good password binds");
    assert!(attempt("nope").await.starts_with("535 5.7.8"), "a bad one does not");
    slapd.stop();
    let r = attempt("ldap-pass").await;
    assert!(r.starts_with("454 4.7.0"), "LDAP down: a temporary failure, never 535: {r}");
    slapd.run().await;
    assert!(attempt("ldap-pass").await.starts_with("235"), "and it recovers");
}
