//! `mtac trace --dialogue`: a session's commands (`<`) and replies (`>`) handed to the trace
//! readers while someone traces — one atomic load per line when nobody does. What a client
//! sends after DATA or inside BDAT never passes here (the data phase reads it), and an AUTH
//! command's initial response and every SASL line are shown as `***`.

use crate::admin::{publish_trace, tracing_wanted, TraceLine};
use std::net::IpAddr;

/// Who a session's dialogue lines name, made when a trace first wants them.
#[derive(Debug)]
pub(super) struct Speaker {
    session: String,
    client: IpAddr,
    farm: String,
}

impl Speaker {
    pub(super) fn new(session: &str, client: IpAddr, farm: &str) -> Box<Speaker> {
        Box::new(Speaker { session: session.to_owned(), client, farm: farm.to_owned() })
    }
}

/// Whether dialogue lines are wanted now.
pub(super) fn wanted() -> bool {
    tracing_wanted()
}

/// A command line from the client; `sasl`: the line answers a SASL challenge.
pub(super) fn command(speaker: &Speaker, line: &[u8], sasl: bool) {
    let text = if sasl { "***".to_owned() } else { redacted(&printable(line)) };
    publish(speaker, '<', &text);
}

/// The replies written in one flush.
pub(super) fn replies(speaker: &Speaker, output: &[u8]) {
    for line in output.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        publish(speaker, '>', &printable(line));
    }
}

fn publish(speaker: &Speaker, direction: char, text: &str) {
    publish_trace(TraceLine {
        client: Some(speaker.client),
        farm: Some(speaker.farm.clone()),
        text: format!("session={} client={} {direction} {text}", speaker.session, speaker.client),
        dialogue: true,
    });
}

/// The line as text: CR/LF dropped, other control bytes and non-UTF-8 escaped, at most 512
/// characters.
fn printable(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut text = String::with_capacity(line.len().min(512));
    for c in String::from_utf8_lossy(line).chars().take(512) {
        if c.is_control() {
            text.extend(c.escape_default());
        } else {
            text.push(c);
        }
    }
    text
}

/// `AUTH MECHANISM RESPONSE`: the response is a credential.
fn redacted(text: &str) -> String {
    let mut words = text.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mechanism), Some(_)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mechanism} ***")
        }
        _ => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_control_bytes_never_reach_a_trace() {
        assert_eq!(redacted("AUTH PLAIN AGFsaWNlAHNlY3JldA=="), "AUTH PLAIN ***");
        assert_eq!(redacted("auth login YWxpY2U="), "auth login ***");
        assert_eq!(redacted("AUTH LOGIN"), "AUTH LOGIN");
        assert_eq!(redacted("MAIL FROM:<a@example.org>"), "MAIL FROM:<a@example.org>");
        assert_eq!(printable(b"EHLO x\x1b[31m\r"), "EHLO x\\u{1b}[31m");
    }
}
