//! Issue 18: CHUNKING/BDAT (RFC 3030) on receive, written raw (Python's smtplib cannot send
//! BDAT). A chunk's octets are content as they are: a `.` line, a leading dot, nothing ends the
//! message but `LAST`. Relayed as BDAT to a back end that offers CHUNKING, as dot-stuffed DATA
//! to one that does not; byte-exact either way.

use super::support::{code, relay_policy, Behaviour, Client, Sink, TestNode};

/// Content that DATA would have to dot-stuff, and that would end a DATA transfer if unstuffed.
const MESSAGE: &[u8] = b"Subject: chunked\r\nFrom: <a@sender.example>\r\n\r\n.\r\n..two dots\r\n.leading dot\r\n\
.\r\nQUIT\r\nlast line\r\n";

async fn ready(node: &TestNode) -> Client {
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client.example").await;
    assert!(ehlo.contains("CHUNKING"), "{ehlo}");
    c
}

async fn envelope(c: &mut Client) {
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
}

/// One BDAT command with its octets; the reply.
async fn bdat(c: &mut Client, chunk: &[u8], last: bool) -> String {
    let mut wire = format!("BDAT {}{}\r\n", chunk.len(), if last { " LAST" } else { "" }).into_bytes();
    wire.extend_from_slice(chunk);
    c.send(&wire).await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_bdat_arrives_byte_exact_with_and_without_chunking_at_the_back_end() {
    for chunking in [true, false] {
        let sink = Sink::start(Behaviour { chunking, ..Behaviour::default() }).await;
        let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
        let mut c = ready(&node).await;
        envelope(&mut c).await;
        let (first, second) = MESSAGE.split_at(52);
        let r = bdat(&mut c, first, false).await;
        assert_eq!(r, "250 2.0.0 52 octets received");
        let r = bdat(&mut c, second, true).await;
        assert_eq!(code(&r), 250, "{r}");
        assert_eq!(code(&c.cmd("NOOP").await), 250, "the session goes on");
        let messages = sink.messages();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].bdat, chunking, "relayed as BDAT only to a back end that offers it");
        assert!(
            messages[0].data.ends_with(MESSAGE),
            "not byte-exact (chunking={chunking}): {:?}",
            String::from_utf8_lossy(&messages[0].data)
        );
        assert!(messages[0].data.starts_with(b"Received: "), "our trace header goes in front");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_bdat_over_the_size_limit_is_552_and_its_octets_are_consumed() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(r#"limits { message-size "2KiB" }"#), Some(sink.addr)).await;
    let mut c = ready(&node).await;
    envelope(&mut c).await;
    // Octets that would read as commands if they were not consumed.
    let big = b"RSET\r\nMAIL FROM:<evil@x.example>\r\n".repeat(100);
    let r = bdat(&mut c, &big, false).await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The client had pipelined its last chunk: no transaction any more, octets dropped.
    let r = bdat(&mut c, b"QUIT\r\n", true).await;
    assert_eq!(code(&r), 503, "{r}");
    assert_eq!(code(&c.cmd("NOOP").await), 250, "the session goes on");
    envelope(&mut c).await;
    assert_eq!(code(&bdat(&mut c, MESSAGE, true).await), 250);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].data.ends_with(MESSAGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_bdat_out_of_sequence_is_503_and_never_read_as_commands() {
    let sink = Sink::start(Behaviour { chunking: true, ..Behaviour::default() }).await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut c = ready(&node).await;
    // Before MAIL: 503, and the octets are not commands.
    let r = bdat(&mut c, b"QUIT\r\n", true).await;
    assert!(r.starts_with("503 5.5.1"), "{r}");
    assert_eq!(code(&c.cmd("NOOP").await), 250);
    // DATA inside a BDAT transaction: 503, the transaction goes on.
    envelope(&mut c).await;
    assert_eq!(code(&bdat(&mut c, b"Subject: x\r\n\r\n", false).await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 503);
    assert_eq!(code(&c.cmd("NOOP").await), 250);
    assert_eq!(code(&bdat(&mut c, b"body\r\n", true).await), 250);
    assert!(sink.messages()[0].data.ends_with(b"Subject: x\r\n\r\nbody\r\n"));
    // RSET between chunks abandons the message.
    envelope(&mut c).await;
    assert_eq!(code(&bdat(&mut c, b"Subject: y\r\n\r\n", false).await), 250);
    assert_eq!(code(&c.cmd("RSET").await), 250);
    assert_eq!(code(&bdat(&mut c, b"more\r\n", true).await), 503, "no transaction after RSET");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_a_bare_line_feed_in_bdat_follows_the_data_rule() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut c = ready(&node).await;
    envelope(&mut c).await;
    let r = bdat(&mut c, b"Subject: x\r\n\r\nhidden\n.\nMAIL FROM:<x@y>\r\n", true).await;
    assert!(r.starts_with("550 5.5.2"), "bare LF refused as in DATA (bare-line-ends reject): {r}");
    assert!(sink.messages().is_empty());
}
