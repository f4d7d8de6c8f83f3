//! Issue 14, the smaller trust defects, each seen the way a user (or an attacker) sees it: a
//! node on 127.0.0.1:0 spoken to in raw SMTP, or `Node::new` refusing to start.

use crate::submission::{b64, certificate, phc, policy, starttls};
use crate::support::{code, relay_policy, Behaviour, Client, Sink, TestNode};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A submission node with alice in its table, `auth_props` on its `auth` node and `extra`
/// inside its farm.
async fn submission(dir: &Path, sink: &Sink, auth_props: &str, extra: &str) -> (TestNode, String) {
    let (cert, key) = certificate(dir);
    let auth = format!(
        r#"auth {auth_props} {{ user "alice" hash="{}" }}
    {extra}"#,
        phc("correct horse")
    );
    (TestNode::start(&policy(&cert, &key, &auth, ""), Some(sink.addr)).await, cert)
}

/// RFC 4954 §4: a SASL answer longer than the line limit ends the exchange with 500 5.5.6 and
/// the next line is a command again. Before, the exchange stayed open and read the client's
/// next command as its base64 answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_a_too_long_line_ends_the_auth_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (node, cert) = submission(dir.path(), &sink, "", "").await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd("AUTH PLAIN").await.starts_with("334"));
    let r = s.cmd(&"A".repeat(5000)).await;
    assert!(r.starts_with("500 5.5.6 "), "{r}");
    let r = s.cmd("NOOP").await;
    assert_eq!(code(&r), 250, "NOOP is a command again, not a SASL answer: {r}");
    let r = s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await;
    assert!(r.starts_with("235"), "{r}");
}

/// `forged-local-sender` must see that the session authenticated: alice writing From: her own
/// local address through the submission farm was refused as a forger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_forged_local_sender_trusts_an_authenticated_user() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (node, cert) = submission(dir.path(), &sink, "", "mime { forged-local-sender #true; }").await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>").await), 250);
    assert_eq!(code(&s.cmd("RCPT TO:<friend@elsewhere.example>").await), 250);
    assert_eq!(code(&s.cmd("DATA").await), 354);
    s.stream.get_mut().write_all(b"From: Alice <alice@example.test>\r\nSubject: hi\r\n\r\nhello\r\n").await.unwrap();
    let r = s.cmd(".").await;
    assert_eq!(code(&r), 250, "{r}");
    assert_eq!(sink.messages().len(), 1);
}

/// An authenticated user may not send with the null reverse path unless the farm says
/// `null-sender=#true` (Postfix's reject_authenticated_sender_login_mismatch: nobody owns `<>`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_the_null_sender_after_auth_is_refused_unless_the_farm_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (node, cert) = submission(dir.path(), &sink, "", "").await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    let r = s.cmd("MAIL FROM:<>").await;
    assert!(r.starts_with("553 5.7.1 "), "{r}");
    assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>").await), 250, "her own address still works");
    drop(node);

    let allowed = tempfile::tempdir().unwrap();
    let (node, cert) = submission(allowed.path(), &sink, "null-sender=#true", "").await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    assert_eq!(code(&s.cmd("MAIL FROM:<>").await), 250);
    assert_eq!(code(&s.cmd("RCPT TO:<friend@elsewhere.example>").await), 250);
    assert_eq!(code(&s.cmd("DATA").await), 354);
    let r = s.cmd("Subject: read receipt\r\n\r\nread\r\n.").await;
    assert_eq!(code(&r), 250, "{r}");
    assert_eq!(sink.messages()[0].from, "", "relayed with MAIL FROM:<>");
}

/// The back end gets each path in one canonical form: needless quotes dropped (so `"bob"@…` is
/// the same recipient as `bob@…` to every table and to the back end), needed ones with only
/// `"` and `\` escaped; a quoted `>` that a careless back end would read as the path's end
/// followed by a parameter is refused with 553 and never relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_paths_reach_the_back_end_in_canonical_form() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example.org").await;
    let r = c.cmd(r#"MAIL FROM:<"a> SIZE=1"@x.example>"#).await;
    assert!(r.starts_with("553 5.1.7 "), "{r}");
    assert_eq!(code(&c.cmd(r#"MAIL FROM:<"alice"@example.org>"#).await), 250);
    let r = c.cmd(r#"RCPT TO:<"bob> NOTIFY=NEVER"@example.test>"#).await;
    assert!(r.starts_with("553 5.1.3 "), "{r}");
    assert_eq!(code(&c.cmd(r#"RCPT TO:<"b\ob"@example.test>"#).await), 250);
    assert_eq!(code(&c.cmd(r#"RCPT TO:<"john\ doe"@example.test>"#).await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    let r = c.cmd("Subject: t\r\n\r\nbody\r\n.").await;
    assert_eq!(code(&r), 250, "{r}");
    let m = &sink.messages()[0];
    assert_eq!(m.from, "alice@example.org");
    assert_eq!(m.rcpts, vec!["bob@example.test".to_owned(), "\"john doe\"@example.test".to_owned()]);
}

/// Start (and drop) a node whose spool is `spool`: `Err` says why it refused.
fn start_with_spool(spool: &Path) -> Result<(), String> {
    let policy = relay_policy("").replace("{dir}/spool", spool.to_str().unwrap()).replace("{backend}", "127.0.0.1:9");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), policy).unwrap();
    let path = file.path().to_owned();
    let loader: mtac_runtime::Loader = Arc::new(move || {
        let c = mtac_compiler::compile_path_with(&path, &mtac_compiler::Options::default());
        c.output.map(|o| o.ruleset).ok_or_else(|| format!("{:?}", c.diagnostics.list))
    });
    mtac_runtime::Node::new(loader).map(|_| ()).map_err(|e| e.to_string())
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Spool files are 0600 in a 0700 directory of the node's own, and a spool directory someone
/// else could read, write or swap is refused at start with what to do. Before, an existing
/// directory was used whoever owned it (another local user could pre-create the default
/// /dev/shm/mtac), and files were 0644.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_the_spool_is_private_to_the_node() {
    let base = tempfile::tempdir().unwrap();
    let at = |name: &str| base.path().join(name);

    // Made by the node: 0700. One of ours that others could only read: tightened.
    start_with_spool(&at("new")).unwrap();
    assert_eq!(mode(&at("new")), 0o700);
    std::fs::create_dir(at("readable")).unwrap();
    std::fs::set_permissions(at("readable"), std::fs::Permissions::from_mode(0o755)).unwrap();
    start_with_spool(&at("readable")).unwrap();
    assert_eq!(mode(&at("readable")), 0o700);

    // Writable by others.
    std::fs::create_dir(at("open")).unwrap();
    std::fs::set_permissions(at("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = start_with_spool(&at("open")).unwrap_err();
    assert!(e.contains("writable by group or others (mode 0777)") && e.contains("chmod 0700"), "{e}");

    // A symbolic link (to a directory that would pass).
    std::os::unix::fs::symlink(at("new"), at("link")).unwrap();
    let e = start_with_spool(&at("link")).unwrap_err();
    assert!(e.contains("symbolic link"), "{e}");

    // A parent anyone may write without the sticky bit; with it (like /dev/shm) it is fine.
    std::fs::create_dir(at("shared")).unwrap();
    std::fs::set_permissions(at("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = start_with_spool(&at("shared").join("spool")).unwrap_err();
    assert!(e.contains("sticky"), "{e}");
    std::fs::set_permissions(at("shared"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    start_with_spool(&at("shared").join("spool")).unwrap();

    // Another user's directory, pre-created where the node would make its own (only root can
    // give a directory away, so this part needs it).
    std::fs::create_dir(at("foreign")).unwrap();
    std::fs::set_permissions(at("foreign"), std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(at("foreign"), Some(65534), Some(65534)).is_ok() {
        let e = start_with_spool(&at("foreign")).unwrap_err();
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }

    // A message in flight that outgrew memory: its file is 0600 (the back end sits on it, so
    // it stays there). A small one never becomes a file (spool.rs).
    let sink = Sink::start(Behaviour { hang_after_data: true, ..Behaviour::default() }).await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let spool = node.dir.path().join("spool");
    assert_eq!(mode(&spool), 0o700);
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example.org").await;
    c.cmd("MAIL FROM:<alice@example.org>").await;
    c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(code(&c.cmd("DATA").await), 354);
    let mut message = b"Subject: t\r\n\r\n".to_vec();
    for _ in 0..3000 {
        message.extend_from_slice(&[b'x'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b".\r\n");
    c.send(&message).await;
    let mut files = Vec::new();
    for _ in 0..100 {
        // The admin socket lives beside the messages: only message files count.
        files = std::fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "msg"))
            .collect();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(files.len(), 1, "the message is in the spool while the back end decides");
    assert_eq!(mode(&files[0]), 0o600, "{}", files[0].display());
}
