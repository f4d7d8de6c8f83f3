//! Issue 18, SNI: a farm with several certificates answers each client with the one for the
//! name it asks for (`openssl s_client -servername`), its own for other names and for clients
//! that ask for none; `mtac check` checks every one.

use crate::support::{relay_policy, Behaviour, Sink, TestNode};
use std::path::Path;
use std::process::{Command, Stdio};

/// A self-signed certificate and key for `name`, as `stem.pem` and `stem.key` in `dir`.
pub(crate) fn certificate(dir: &Path, stem: &str, name: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert.display().to_string(), key.display().to_string())
}

/// The subject of the certificate the node shows a client asking for `name` (none: no SNI).
fn served_subject(port: u16, name: Option<&str>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-starttls", "smtp", "-connect", &format!("127.0.0.1:{port}")]);
    match name {
        Some(name) => cmd.args(["-servername", name]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_the_certificate_for_the_name_it_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (own, own_key) = certificate(dir.path(), "own", "mx.test.example");
    let (b, b_key) = certificate(dir.path(), "b", "mail.b.example");
    let (c, c_key) = certificate(dir.path(), "c", "*.c.example");
    let tls = format!(
        r#"tls certificate="{own}" key="{own_key}" {{
        sni "mail.b.example" certificate="{b}" key="{b_key}"
        sni "*.c.example" certificate="{c}" key="{c_key}"
    }}"#
    );
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(&tls), Some(sink.addr)).await;
    let port = node.addr.port();
    let subjects = tokio::task::spawn_blocking(move || {
        [Some("mail.b.example"), Some("MAIL.B.EXAMPLE"), Some("smtp.c.example"), Some("mail.other.example"), None]
            .map(|name| served_subject(port, name))
    })
    .await
    .unwrap();
    assert!(subjects[0].contains("CN=mail.b.example") || subjects[0].contains("CN = mail.b.example"), "{subjects:?}");
    assert_eq!(subjects[1], subjects[0], "names are compared without case");
    assert!(subjects[2].contains("*.c.example"), "a wildcard covers one label: {subjects:?}");
    assert!(subjects[3].contains("mx.test.example"), "another name gets the farm's own: {subjects:?}");
    assert!(subjects[4].contains("mx.test.example"), "no name, the farm's own: {subjects:?}");
}

#[test]
fn check_reads_every_sni_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (own, own_key) = certificate(dir.path(), "own", "mx.test.example");
    let (wrong, wrong_key) = certificate(dir.path(), "wrong", "mail.elsewhere.example");
    let policy = dir.path().join("policy.kdl");
    std::fs::write(
        &policy,
        format!(
            r#"hostname "mx.test.example"
farm "users" kind="submission" {{
    listen "127.0.0.1:587"
    local-domains "example.test"
    tls certificate="{own}" key="{own_key}" {{
        sni "mail.b.example" certificate="{wrong}" key="{wrong_key}"
        sni "mail.missing.example" certificate="{missing}" key="{own_key}"
        sni "not a name" certificate="{own}" key="{own_key}"
    }}
    auth {{ user "alice" hash="$argon2id$v=19$m=19456,t=2,p=1$bXRhYy1leGFtcGxl$NjI0MzZlYzM5NzM2ZmE0ZDc1ZmQ3NzA1"; }}
    relay {{ backend "smtp://127.0.0.1:2600"; }}
}}
"#,
            missing = dir.path().join("missing.pem").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("check").arg(&policy).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("does not name mail.b.example"), "{said}");
    assert!(said.contains("missing.pem"), "{said}");
    assert!(said.contains("`not a name` is not a host name"), "{said}");
}
