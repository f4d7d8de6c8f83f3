//! The milter client: the operator's existing filters (opendkim, clamav-milter, spamass-milter,
//! rspamd's milter proxy, in-house ones) asked alongside the SMTP dialogue, as Postfix's
//! `smtpd_milters` asks them. [`codec`] is the wire format without I/O, [`client`] one
//! conversation, [`live`] the session's conversations stage by stage, [`edits`] the
//! modifications made on what is relayed, and [`judge`] the one place that turns a milter's
//! answer (or its silence) into a refusal or the changes relayed.
//!
//! Written here rather than taken from a crate: the Rust milter crates are milter *servers*
//! (for writing a filter), and the client side is a few hundred lines over a protocol that has
//! not changed since 2006 (ARCHITECTURE.md, dependencies).

pub mod client;
pub mod codec;
pub mod edits;
pub mod live;

use crate::smtp::{EnhancedCode, Reply};
use client::{Answer, Edit, Verdict};
use mtac_ruleset::filters::{decide, FilterDecision, FilterVerdict};
use mtac_ruleset::model::{Filter, FilterKind};
use mtac_ruleset::rules;
use std::collections::VecDeque;

/// What the farm does with one filter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Relay, with these header lines (CRLF-terminated) in front of the message and these
    /// modifications made ([`edits`]).
    Pass { headers: String, edits: Vec<Edit> },
    /// Answer 250 and drop the message (a discard the policy allows).
    Discard,
    /// Refuse with this reply; the rule for logs and metrics.
    Refuse { reply: Reply, rule: &'static str },
}

/// The farm's decision on a verdict, from `mtac_ruleset::filters::decide` (the mapping
/// `explain` and tests use too).
pub fn decided(filter: &Filter, verdict: FilterVerdict, headers: String) -> Judgement {
    match decide(filter, verdict) {
        FilterDecision::Pass(_) => Judgement::Pass { headers, edits: Vec::new() },
        FilterDecision::Discard => Judgement::Discard,
        FilterDecision::Refuse { reply, rule } => {
            Judgement::Refuse { reply: crate::session::policy_reply(&reply), rule }
        }
    }
}

/// Turn a filter's answer into the farm's decision.
pub fn judge(filter: &Filter, answer: &Answer) -> Judgement {
    let (verdict, custom, class) = match &answer.verdict {
        Verdict::Reject { reply, .. } => (FilterVerdict::Reject, reply.as_deref(), 5),
        Verdict::Tempfail { reply, .. } => (FilterVerdict::Tempfail, reply.as_deref(), 4),
        Verdict::Discard { .. } => (FilterVerdict::Discard, None, 0),
        Verdict::Pass => (FilterVerdict::Continue, None, 0),
    };
    if let Some(reply) = custom_reply(custom, class) {
        let rule = match filter.kind {
            FilterKind::Milter => rules::MILTER,
            FilterKind::Hook => rules::HOOK,
        };
        return Judgement::Refuse { reply, rule };
    }
    if verdict != FilterVerdict::Continue {
        return decided(filter, verdict, String::new());
    }
    let mut headers = String::new();
    let mut kept = Vec::new();
    for edit in &answer.edits {
        match edit {
            // A hook's added fields are trace fields, put in front like mtac's own.
            Edit::AddHeader { name, value } if filter.kind == FilterKind::Hook => match header_line(name, value) {
                Some(line) => headers.push_str(&line),
                None => return decided(filter, FilterVerdict::Unavailable, headers),
            },
            Edit::AddHeader { name, value }
            | Edit::InsertHeader { name, value, .. }
            | Edit::ChangeHeader { name, value, .. } => {
                // A field that could not be written as asked makes the milter a broken one.
                let deletes = matches!(edit, Edit::ChangeHeader { .. }) && value.trim().is_empty();
                if header_line(name, if deletes { "x" } else { value }).is_none() {
                    return decided(filter, FilterVerdict::Unavailable, headers);
                }
                kept.push(edit.clone());
            }
            Edit::ReplaceBody => kept.push(Edit::ReplaceBody),
            Edit::Quarantine(reason) => {
                let reason: String = reason.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(200).collect();
                headers.push_str(&format!("X-Quarantine: {}: {reason}\r\n", filter.name));
                if let refused @ (Judgement::Refuse { .. } | Judgement::Discard) =
                    decided(filter, FilterVerdict::Quarantine, String::new())
                {
                    return refused;
                }
            }
            Edit::AddRecipient(_) | Edit::DeleteRecipient(_) if filter.change_recipients => kept.push(edit.clone()),
            // Changes the policy does not allow (recipients without `recipients="change"`) or
            // mtac does not make (the sender: the back end took MAIL FROM already). Deferred,
            // never silently lost.
            Edit::AddRecipient(_) | Edit::DeleteRecipient(_) | Edit::ChangeSender => {
                return decided(filter, FilterVerdict::Unsupported, headers)
            }
        }
    }
    Judgement::Pass { headers, edits: kept }
}

/// A milter's own reply (`SMFIR_REPLYCODE`) when it is a valid one of `class` (4 or 5): its
/// first line, a 4xx/5xx code of that class, an enhanced code of the same class if any, and its
/// text cut to printable ASCII.
fn custom_reply(text: Option<&str>, class: u8) -> Option<Reply> {
    let line = text?.lines().next()?;
    let code: u16 = line.get(..3)?.parse().ok()?;
    if code / 100 != u16::from(class) {
        return None;
    }
    let rest = line.get(3..)?.trim_start_matches(['-', ' ']);
    let (enhanced, words) = match rest.split_once(' ').unwrap_or((rest, "")) {
        (e, words) if e.split('.').count() == 3 => {
            let mut parts = e.split('.').map(str::parse::<u16>);
            match (parts.next(), parts.next(), parts.next()) {
                (Some(Ok(c)), Some(Ok(s)), Some(Ok(d))) if c == u16::from(class) => ((class, s, d), words),
                _ => return None,
            }
        }
        _ => ((class, 7, 1), rest),
    };
    let words: String = words.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(200).collect();
    let words = if words.trim().is_empty() { "Message refused by a content filter".to_owned() } else { words };
    Reply::new(code, EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2), words.trim()).ok()
}

/// A header field a milter adds, as a CRLF-terminated line; `None` for one that is not a valid
/// field (its folds, written with LF as libmilter does, become CRLF).
pub fn header_line(name: &str, value: &str) -> Option<String> {
    let name_ok = !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok || value.contains('\0') {
        return None;
    }
    let mut line = format!("{name}:");
    for (i, part) in value.split('\n').enumerate() {
        let part = part.trim_end_matches('\r');
        if part.contains('\r') {
            return None;
        }
        if i == 0 {
            if !part.is_empty() && !part.starts_with([' ', '\t']) {
                line.push(' ');
            }
        } else if !part.starts_with([' ', '\t']) {
            // A continuation line must start with white space, or it would be a new field.
            return None;
        } else {
            line.push_str("\r\n");
        }
        line.push_str(part);
    }
    line.push_str("\r\n");
    Some(line)
}

/// The header section split into fields as it is read, sans I/O: lines are fed as they come
/// from the spool, fields come out whole (name, value with LF folds, CRs gone), and the offset
/// where the body starts is known once the empty line (or a line that is no field) is seen.
/// Memory is one field, cut at `max` bytes.
#[derive(Debug)]
pub struct Fields {
    max: usize,
    /// The unfinished line.
    line: Vec<u8>,
    /// Bytes of the stream taken so far (complete lines and the unfinished one).
    fed: u64,
    /// Where the unfinished line started.
    line_start: u64,
    /// The field being read, and where it started.
    current: Option<(Vec<u8>, Vec<u8>, u64)>,
    /// Whole fields: name, value, and the stream range `start..end` they took.
    ready: VecDeque<(Vec<u8>, Vec<u8>, u64, u64)>,
    body_start: Option<u64>,
}

impl Fields {
    pub fn new(max: usize) -> Self {
        Fields { max, line: Vec::new(), fed: 0, line_start: 0, current: None, ready: VecDeque::new(), body_start: None }
    }

    /// Where to read next.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Where the body starts, once the header section is over.
    pub fn body_start(&self) -> Option<u64> {
        self.body_start
    }

    pub fn next_field(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.ready.pop_front().map(|(name, value, _, _)| (name, value))
    }

    /// The next whole field's name and the range of the stream it took (its line ends included).
    pub fn next_field_span(&mut self) -> Option<(Vec<u8>, u64, u64)> {
        self.ready.pop_front().map(|(name, _, start, end)| (name, start, end))
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while self.body_start.is_none() && !rest.is_empty() {
            let (part, ended) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (rest.get(..=i).unwrap_or_default(), true),
                None => (rest, false),
            };
            rest = rest.get(part.len()..).unwrap_or_default();
            self.fed += part.len() as u64;
            let room = self.max.saturating_sub(self.line.len());
            self.line.extend(part.iter().take(room).copied());
            if ended {
                self.line_done();
            }
        }
    }

    /// The end of the message: what is pending is the last field, and the body is empty.
    pub fn finish(&mut self) {
        if self.body_start.is_none() {
            if !self.line.is_empty() {
                self.line.push(b'\n');
                self.line_done();
            }
            self.flush_current(self.fed);
            self.body_start.get_or_insert(self.fed);
        }
    }

    fn line_done(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        let start = self.line_start;
        self.line_start = self.fed;
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            if let Some((_, value, _)) = self.current.as_mut() {
                if value.len() + line.len() < self.max {
                    value.push(b'\n');
                    value.extend_from_slice(&line);
                }
                return;
            }
        }
        self.flush_current(start);
        let field = line
            .iter()
            .position(|b| *b == b':')
            .filter(|&colon| colon > 0 && line.get(..colon).is_some_and(|n| n.iter().all(|b| b.is_ascii_graphic())));
        match field {
            Some(colon) => {
                let name = line.get(..colon).unwrap_or_default().to_vec();
                let value = line.get(colon + 1..).unwrap_or_default().to_vec();
                self.current = Some((name, value, start));
            }
            // The empty line ends the section after it; a line that is no field is the body's
            // first line (Postfix reads it so too).
            None if line.is_empty() => self.body_start = Some(self.fed),
            None => self.body_start = Some(start),
        }
    }

    /// The current field is whole: it ended at `end`.
    fn flush_current(&mut self, end: u64) {
        if let Some((name, value, start)) = self.current.take() {
            self.ready.push_back((name, value, start, end));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn split(message: &[u8], piece: usize) -> (Vec<(String, String)>, u64) {
        let mut fields = Fields::new(64);
        let mut out = Vec::new();
        loop {
            let at = fields.fed() as usize;
            match message.get(at..at + piece.min(message.len() - at)) {
                Some(chunk) if !chunk.is_empty() => fields.feed(chunk),
                _ => fields.finish(),
            }
            while let Some((n, v)) = fields.next_field() {
                out.push((String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()));
            }
            if let Some(start) = fields.body_start() {
                return (out, start);
            }
        }
    }

    #[test]
    fn fields_come_out_whole_whatever_the_reads() {
        let message = b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n";
        for piece in [1, 3, 7, 64] {
            let (fields, start) = split(message, piece);
            assert_eq!(
                fields,
                [("Received".into(), " from x\n\tby y".into()), ("Subject".into(), " hi".into())],
                "piece {piece}"
            );
            assert_eq!(&message[start as usize..], b"body\r\n", "piece {piece}");
        }
        // No empty line: a line that is no field starts the body; no body at all is fine.
        let (fields, start) = split(b"A: 1\r\nnot a field\r\n", 5);
        assert_eq!((fields.len(), start), (1, 6));
        let (fields, start) = split(b"A: 1\r\nB: 2", 4);
        assert_eq!((fields.len(), start), (2, 10));
        // A field longer than the cap is cut, not held whole.
        let long = format!("X: {}\r\n\r\n", "a".repeat(500));
        let (fields, _) = split(long.as_bytes(), 100);
        assert!(fields[0].1.len() < 64, "{}", fields[0].1.len());
    }

    /// The ranges fields take are what the header overlay (`edits`) relays: whole lines, folds
    /// included, whatever the reads.
    #[test]
    fn field_spans_cover_their_lines() {
        let message = b"Received: from x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n";
        for piece in [1, 5, 64] {
            let mut fields = Fields::new(64);
            let mut spans = Vec::new();
            while fields.body_start().is_none() {
                let at = fields.fed() as usize;
                match message.get(at..(at + piece).min(message.len())) {
                    Some(chunk) if !chunk.is_empty() => fields.feed(chunk),
                    _ => fields.finish(),
                }
                while let Some((name, start, end)) = fields.next_field_span() {
                    spans.push((String::from_utf8(name).unwrap(), start, end));
                }
            }
            assert_eq!(spans, [("Received".into(), 0, 25), ("Subject".into(), 25, 38)], "piece {piece}");
            assert_eq!(&message[25..38], b"Subject: hi\r\n");
        }
    }

    #[test]
    fn custom_replies_are_checked_and_cleaned() {
        let r = |t: &str, class| custom_reply(Some(t), class).map(|r| String::from_utf8(r.to_bytes()).unwrap());
        assert_eq!(r("554 5.7.1 Virus found\r\n", 5).as_deref(), Some("554 5.7.1 Virus found\r\n"));
        assert_eq!(r("452 4.3.1 busy", 4).as_deref(), Some("452 4.3.1 busy\r\n"));
        assert_eq!(r("550 bad \x07bell", 5).as_deref(), Some("550 5.7.1 bad bell\r\n"));
        assert_eq!(r("250 2.0.0 ok", 5), None, "never a 2xx");
        assert_eq!(r("550 4.7.1 mixed", 5), None, "classes must agree");
        assert_eq!(r("55x", 5), None);
    }

    #[test]
    fn added_headers_are_valid_fields() {
        assert_eq!(header_line("X-A", "b").as_deref(), Some("X-A: b\r\n"));
        assert_eq!(header_line("A-R", "mx;\n\tdkim=none").as_deref(), Some("A-R: mx;\r\n\tdkim=none\r\n"));
        assert_eq!(header_line("X-A", "b\nnot-folded"), None);
        assert_eq!(header_line("X A", "b"), None);
        assert_eq!(header_line("X-A", "b\0"), None);
    }
}
