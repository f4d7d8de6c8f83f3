//! KDL readers and value parsers shared by every chapter: diagnostics, the shape of a node
//! (docs/policy.md section 1, "KDL 2.0 in brief"), and the typed values of "Values used in this
//! reference" (strings, booleans, integers, durations, sizes, replies, stages, prefixes).

use super::ir::{Origin, Pos};
use super::{At, Lowerer};
use crate::diag::did_you_mean;
use kdl::{KdlEntry, KdlValue};
use mtac_ruleset::model::{Reply, Stage};
use std::path::Path;

impl Lowerer {
    // ----- shape checks --------------------------------------------------------------------------

    pub(super) fn unknown_node(&mut self, at: At<'_>, known: &[&str], context: &str) {
        let name = at.node.name().value();
        let help = match did_you_mean(name, known) {
            Some(guess) => format!("did you mean `{guess}`?"),
            None => format!("{context} may contain: {}", known.join(", ")),
        };
        self.reporter.err(
            "mtac::unknown-node",
            format!("unknown node `{name}` in {context}"),
            at.file,
            at.node.name().span(),
            "not part of the policy language",
            &help,
        );
    }

    /// Report properties not in `allowed`, arguments beyond `max_args`, and unexpected children.
    pub(super) fn shape(&mut self, at: At<'_>, allowed: &[&str], max_args: usize, children: bool) {
        let node_name = at.node.name().value().to_owned();
        let mut args = 0usize;
        for entry in at.node.entries() {
            match entry.name() {
                Some(key) => {
                    if !allowed.contains(&key.value()) {
                        let help = match did_you_mean(key.value(), allowed) {
                            Some(guess) => format!("did you mean `{guess}`?"),
                            None if allowed.is_empty() => format!("`{node_name}` takes no properties"),
                            None => format!("`{node_name}` accepts: {}", allowed.join(", ")),
                        };
                        self.reporter.err(
                            "mtac::unknown-property",
                            format!("unknown property `{}` on `{node_name}`", key.value()),
                            at.file,
                            entry.span(),
                            "unknown property",
                            &help,
                        );
                    }
                }
                None => {
                    args += 1;
                    if args > max_args {
                        let help = if max_args == 0 {
                            format!("`{node_name}` takes no arguments")
                        } else {
                            format!("`{node_name}` takes at most {max_args} argument(s)")
                        };
                        self.reporter.err(
                            "mtac::extra-argument",
                            format!("too many arguments to `{node_name}`"),
                            at.file,
                            entry.span(),
                            "unexpected argument",
                            &help,
                        );
                    }
                }
            }
        }
        if !children {
            if let Some(doc) = at.node.children() {
                if !doc.nodes().is_empty() {
                    self.reporter.err(
                        "mtac::unexpected-children",
                        format!("`{node_name}` takes no child nodes"),
                        at.file,
                        at.node.span(),
                        "has a { … } block",
                        "remove the block, or move its contents to the parent",
                    );
                }
            }
        }
    }

    pub(super) fn args<'a>(at: At<'a>) -> impl Iterator<Item = &'a KdlEntry> {
        at.node.entries().iter().filter(|e| e.name().is_none())
    }

    pub(super) fn prop<'a>(at: At<'a>, key: &str) -> Option<&'a KdlEntry> {
        // The last occurrence wins, as the KDL spec says for duplicate properties.
        at.node.entries().iter().rev().find(|e| e.name().is_some_and(|n| n.value() == key))
    }

    pub(super) fn children<'a>(at: At<'a>) -> impl Iterator<Item = At<'a>> {
        let file = at.file;
        at.node.children().into_iter().flat_map(|doc| doc.nodes()).map(move |node| At { node, file })
    }

    // ----- typed values --------------------------------------------------------------------------

    pub(super) fn string(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            other => {
                self.reporter.err(
                    "mtac::type",
                    format!("{what} must be a string, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected a string",
                    "write it in quotes, e.g. \"example.com\"",
                );
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.reporter.err(
                    "mtac::type",
                    format!("{what} must be a boolean, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected #true or #false",
                    "KDL 2.0 booleans are written #true and #false",
                );
                None
            }
        }
    }

    pub(super) fn bool_prop(&mut self, at: At<'_>, key: &str, default: bool) -> bool {
        match Self::prop(at, key) {
            Some(entry) => self.boolean(entry, at.file, &format!("`{key}`")).unwrap_or(default),
            None => default,
        }
    }

    pub(super) fn integer(&mut self, entry: &KdlEntry, file: usize, what: &str, min: i64, max: i64) -> Option<i64> {
        let value = match entry.value() {
            KdlValue::Integer(i) => *i,
            other => {
                self.reporter.err(
                    "mtac::type",
                    format!("{what} must be an integer, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected an integer",
                    "",
                );
                return None;
            }
        };
        match i64::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.reporter.err(
                    "mtac::range",
                    format!("{what} must be between {min} and {max}, found {value}"),
                    file,
                    entry.span(),
                    "out of range",
                    "",
                );
                None
            }
        }
    }

    pub(super) fn u32_value(&mut self, entry: &KdlEntry, file: usize, what: &str, min: u32) -> Option<u32> {
        self.integer(entry, file, what, i64::from(min), i64::from(u32::MAX)).and_then(|v| u32::try_from(v).ok())
    }

    /// A duration: an integer number of seconds or a string like `30s`, `5m`, `4h`, `36d`.
    pub(super) fn duration(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u32> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u32::try_from(*i).ok(),
            KdlValue::String(s) => parse_duration(s),
            _ => None,
        };
        let help = "write seconds as an integer, or a string with a unit: \"30s\", \"5m\", \"4h\", \"36d\"";
        self.duration_or_report(parsed, entry, file, what, help)
    }

    /// Report a duration that did not parse (`parsed` is `None`), with the unit's help line.
    fn duration_or_report(
        &mut self,
        parsed: Option<u32>,
        entry: &KdlEntry,
        file: usize,
        what: &str,
        help: &str,
    ) -> Option<u32> {
        if parsed.is_none() {
            self.reporter.err(
                "mtac::duration",
                format!("{what} is not a valid duration"),
                file,
                entry.span(),
                "expected a duration",
                help,
            );
        }
        parsed
    }

    /// A duration in milliseconds: `500ms`, `2s`, or an integer number of milliseconds.
    pub(super) fn duration_ms(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u32> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u32::try_from(*i).ok(),
            KdlValue::String(s) => match s.strip_suffix("ms") {
                Some(ms) => ms.trim().parse::<u32>().ok(),
                None => parse_duration(s).and_then(|secs| secs.checked_mul(1000)),
            },
            _ => None,
        };
        let help = "write milliseconds as an integer, or a string with a unit: \"500ms\", \"2s\"";
        self.duration_or_report(parsed, entry, file, what, help)
    }

    pub(super) fn size(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u64> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u64::try_from(*i).ok(),
            KdlValue::String(s) => parse_size(s),
            _ => None,
        };
        if parsed.is_none() {
            self.reporter.err(
                "mtac::size",
                format!("{what} is not a valid size"),
                file,
                entry.span(),
                "expected a size",
                "write bytes as an integer, or a string with a unit: \"512KiB\", \"25MiB\", \"15MB\"",
            );
        }
        parsed
    }

    pub(super) fn reply(&mut self, entry: &KdlEntry, file: usize, class: Option<char>) -> Option<Reply> {
        let text = self.string(entry, file, "a reply")?;
        match parse_reply(&text) {
            Ok(reply) => {
                let first = reply.code.to_string().chars().next();
                if let (Some(class), Some(first)) = (class, first) {
                    if class != first {
                        self.reporter.err(
                            "mtac::reply::class",
                            format!("this reply must be a {class}xx reply, not {}", reply.code),
                            file,
                            entry.span(),
                            "wrong reply class",
                            if class == '4' {
                                "a deferral is a temporary failure: use 4xx, e.g. \"450 4.7.1 Try later\""
                            } else {
                                "a reject is a permanent failure: use 5xx, e.g. \"550 5.7.1 Rejected\""
                            },
                        );
                        return None;
                    }
                }
                Some(reply)
            }
            Err(why) => {
                self.reporter.err(
                    "mtac::reply",
                    format!("invalid SMTP reply: {why}"),
                    file,
                    entry.span(),
                    "invalid reply",
                    "write \"CODE X.Y.Z text\", e.g. \"550 5.7.1 Client host rejected\" (RFC 5321 and RFC 3463)",
                );
                None
            }
        }
    }

    pub(super) fn stage(&mut self, at: At<'_>, allowed: &[Stage]) -> Option<Stage> {
        let entry = Self::prop(at, "stage")?;
        let text = self.string(entry, at.file, "`stage`")?;
        match Stage::parse(&text).filter(|s| allowed.contains(s)) {
            Some(stage) => Some(stage),
            None => {
                let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                self.reporter.err(
                    "mtac::stage",
                    format!("`{}` cannot decide at stage `{text}`", at.node.name().value()),
                    at.file,
                    entry.span(),
                    "unsupported stage",
                    &format!(
                        "use one of: {} (rcpt, the default, answers listed clients at RCPT TO, as seed 002 advises)",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    pub(super) fn origin_of(&self, at: At<'_>) -> Origin {
        Origin { file: at.file, pos: Pos::Span(at.node.span()) }
    }

    pub(super) fn one_string(&mut self, at: At<'_>, what: &str) -> Option<String> {
        match Self::args(at).next() {
            Some(entry) => self.string(entry, at.file, what),
            None => {
                let name = at.node.name().value().to_owned();
                self.reporter.err(
                    "mtac::missing-argument",
                    format!("`{name}` needs {what}"),
                    at.file,
                    at.node.span(),
                    "argument missing",
                    &format!("write e.g. `{name} \"…\"`"),
                );
                None
            }
        }
    }

    pub(super) fn prefix_prop(&mut self, at: At<'_>, key: &str, max: u8) -> Option<u8> {
        let entry = Self::prop(at, key)?;
        let text = self.string(entry, at.file, &format!("`{key}`"))?;
        match text.strip_prefix('/').and_then(|n| n.parse::<u8>().ok()).filter(|n| *n <= max && *n > 0) {
            Some(n) => Some(n),
            None => {
                self.reporter.err(
                    "mtac::prefix",
                    format!("`{text}` is not a prefix length"),
                    at.file,
                    entry.span(),
                    "invalid prefix length",
                    &format!("write a length from /1 to /{max}, e.g. \"/24\""),
                );
                None
            }
        }
    }
}

/// A path the policy names, relative to the policy file's directory unless absolute.
pub(super) fn relative_to(dir: &Path, path: String) -> String {
    if Path::new(&path).is_absolute() {
        path
    } else {
        dir.join(path).display().to_string()
    }
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

/// `30s`, `5m`, `4h`, `36d`, or plain seconds.
pub fn parse_duration(text: &str) -> Option<u32> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u32 = number.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `512KiB`, `25MiB`, `15MB`, `1GiB`, or plain bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1024 * 1024,
        "GB" => 1_000_000_000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `550 5.7.1 text` → a checked reply.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let mut parts = text.splitn(3, ' ');
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (400..600).contains(c))
        .ok_or("the code must be 4xx or 5xx")?;
    let status = parts.next().ok_or("the enhanced status code (X.Y.Z) is missing")?;
    let fields: Vec<&str> = status.split('.').collect();
    let valid_status = fields.len() == 3
        && fields.iter().all(|f| !f.is_empty() && f.len() <= 3 && f.bytes().all(|b| b.is_ascii_digit()));
    if !valid_status {
        return Err(format!("`{status}` is not an enhanced status code like 5.7.1"));
    }
    if fields.first().copied() != Some(&code.to_string()[..1]) {
        return Err(format!("status {status} does not match the class of code {code}"));
    }
    let message = parts.next().unwrap_or("").trim();
    if message.is_empty() {
        return Err("the reply text is missing".to_owned());
    }
    if message.chars().any(|c| c.is_control()) {
        return Err("the text must be one line without control characters".to_owned());
    }
    if message.len() > 400 {
        return Err("the text is longer than 400 bytes".to_owned());
    }
    Ok(Reply { code, status: status.to_owned(), text: message.to_owned() })
}

/// `127.0.0.2`, `127.0.0.[4..7]`, `127.0.[0..255].[1..3]`.
pub fn parse_answer_pattern(text: &str) -> Option<[(u8, u8); 4]> {
    let mut octets = [(0u8, 0u8); 4];
    // Split on the dots that separate octets, not the `..` inside a `[lo..hi]` range.
    let mut parts_list = Vec::with_capacity(4);
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            '.' if depth == 0 => {
                parts_list.push(text.get(start..i)?);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts_list.push(text.get(start..)?);
    let mut parts = parts_list.into_iter();
    for slot in octets.iter_mut() {
        let part = parts.next()?;
        *slot = if let Some(range) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (lo, hi) = range.split_once("..")?;
            let (lo, hi): (u8, u8) = (lo.parse().ok()?, hi.parse().ok()?);
            if lo > hi {
                return None;
            }
            (lo, hi)
        } else {
            let v: u8 = part.parse().ok()?;
            (v, v)
        };
    }
    if parts.next().is_some() {
        return None;
    }
    Some(octets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("36d"), Some(36 * 86400));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_size("25MiB"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("15MB"), Some(15_000_000));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn replies() {
        let reply = parse_reply("550 5.7.1 Go away").unwrap();
        assert_eq!((reply.code, reply.status.as_str(), reply.text.as_str()), (550, "5.7.1", "Go away"));
        assert!(parse_reply("550 4.7.1 mismatch").is_err());
        assert!(parse_reply("250 2.0.0 ok").is_err());
        assert!(parse_reply("550 5.7.1").is_err());
    }

    #[test]
    fn answer_patterns() {
        assert_eq!(parse_answer_pattern("127.0.0.2"), Some([(127, 127), (0, 0), (0, 0), (2, 2)]));
        assert_eq!(parse_answer_pattern("127.0.0.[4..7]"), Some([(127, 127), (0, 0), (0, 0), (4, 7)]));
        assert_eq!(parse_answer_pattern("127.0.0.[7..4]"), None);
        assert_eq!(parse_answer_pattern("127.0.0"), None);
    }
}
