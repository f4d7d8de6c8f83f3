//! Content checks: docs/policy.md section 2, `scan`, `verdict-headers`, `authserv-id` and `mime`.

use super::ir::{DraftFarm, DraftScanner, Origin, Pos};
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use kdl::KdlValue;
use mtac_ruleset::model::ScannerKind;
use std::net::SocketAddr;
use std::path::Path;

impl Lowerer {
    pub(crate) fn authserv_id(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 1, false);
        if let Some(id) = self.one_string(at, "an authserv-id") {
            // RFC 8601 §2.5: a domain name, in practice the host's own.
            let valid = !id.is_empty()
                && id.len() <= 253
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
            if valid {
                farm.authserv_id = Some(id.to_ascii_lowercase());
            } else {
                self.reporter.err(
                    "mtac::authserv-id",
                    format!("`{id}` is not an authserv-id"),
                    at.file,
                    at.node.span(),
                    "not a host name",
                    "the name this farm signs its Authentication-Results with, e.g. \"mx.example.com\"",
                );
            }
        }
    }

    /// `mime { forbid-extension …; forbid-type …; require-header …; forged-local-sender BOOL }`.
    pub(crate) fn mime(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let mut rules = farm.mime.take().unwrap_or_default();
        for child in Self::children(at) {
            let name = child.node.name().value().to_owned();
            match name.as_str() {
                "forbid-extension" | "forbid-type" | "require-header" => {
                    self.shape(child, &[], usize::MAX, false);
                    for entry in Self::args(child) {
                        let Some(value) = self.string(entry, child.file, "a value") else { continue };
                        let value = value.trim().to_ascii_lowercase();
                        let ok = match name.as_str() {
                            "forbid-extension" => {
                                let value = value.trim_start_matches('.');
                                !value.is_empty()
                                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                            }
                            "forbid-type" => value.split_once('/').is_some_and(|(t, s)| !t.is_empty() && !s.is_empty()),
                            _ => !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                        };
                        if !ok {
                            self.reporter.err(
                                "mtac::mime::value",
                                format!("`{value}` is not valid for `{name}`"),
                                child.file,
                                entry.span(),
                                "invalid value",
                                "forbid-extension \"exe\"; forbid-type \"application/x-msdownload\" or \"application/*\"; require-header \"Message-ID\"",
                            );
                            continue;
                        }
                        let list = match name.as_str() {
                            "forbid-extension" => &mut rules.forbid_extensions,
                            "forbid-type" => &mut rules.forbid_types,
                            _ => &mut rules.require_headers,
                        };
                        let value = value.trim_start_matches('.').to_owned();
                        if !list.contains(&value) {
                            list.push(value);
                        }
                    }
                }
                "forged-local-sender" => {
                    self.shape(child, &[], 1, false);
                    match Self::args(child).next().map(|e| e.value().clone()) {
                        Some(KdlValue::Bool(b)) => rules.forged_local_sender = b,
                        _ => self.reporter.err(
                            "mtac::mime::value",
                            "`forged-local-sender` takes #true or #false".to_owned(),
                            child.file,
                            child.node.span(),
                            "expected a boolean",
                            "",
                        ),
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("mime")), "`mime`"),
            }
        }
        farm.mime = Some(rules);
    }

    /// `verdict-headers ["NAME"…] [action="remove"|"rename"]`: more header fields the sender
    /// may not hand on, and what to do with them.
    pub(crate) fn verdict_headers(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["action"], usize::MAX, false);
        let rename = match Self::prop(at, "action").and_then(|e| self.string(e, at.file, "`action`")).as_deref() {
            None | Some("remove") => false,
            Some("rename") => true,
            Some(other) => {
                self.reporter.err(
                    "mtac::verdict-headers::action",
                    format!("unknown action `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"remove\" or \"rename\"",
                    "\"remove\" (the default) drops the sender's copies; \"rename\" keeps them as X-Original-NAME",
                );
                false
            }
        };
        let mut names = Vec::new();
        for entry in Self::args(at) {
            let Some(name) = self.string(entry, at.file, "a header field name") else { continue };
            // RFC 5322 §3.6.8: printable ASCII except the colon.
            if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                self.reporter.err(
                    "mtac::verdict-headers::name",
                    format!("`{name}` is not a header field name"),
                    at.file,
                    entry.span(),
                    "invalid name",
                    "a field name without the colon, e.g. \"X-Barracuda-Spam-Status\"",
                );
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if !names.contains(&lower) {
                names.push(lower);
            }
        }
        farm.verdict_headers = Some((names, rename));
    }

    pub(crate) fn scan(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["max-size", "oversize"], 0, true);
        let max_size = Self::prop(at, "max-size").and_then(|e| self.size(e, at.file, "`max-size`"));
        let pass = match Self::prop(at, "oversize").and_then(|e| self.string(e, at.file, "`oversize`")).as_deref() {
            None | Some("refuse") => false,
            Some("pass") => true,
            Some(other) => {
                self.reporter.err(
                    "mtac::scan::oversize",
                    format!("unknown oversize action `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"pass\" or \"refuse\"",
                    "\"refuse\" (the default) answers 552; \"pass\" relays a message too large to scan without scanning it",
                );
                false
            }
        };
        if max_size.is_some() {
            farm.scan_max_size = max_size;
        }
        if Self::prop(at, "oversize").is_some() {
            farm.scan_oversize_pass = pass.then_some(Origin { file: at.file, pos: Pos::Span(at.node.span()) });
        }
        for child in Self::children(at) {
            let kind = match child.node.name().value() {
                "clamav" => ScannerKind::Clamav,
                "spamassassin" => ScannerKind::Spamassassin,
                "rspamd" => ScannerKind::Rspamd,
                _ => {
                    self.unknown_node(child, &nodes::names(Place::In("scan")), "`scan`");
                    continue;
                }
            };
            self.shape(child, &["timeout", "fail", "tag", "reject"], 1, false);
            let Some(address) = self.one_string(child, "the scanner's address") else { continue };
            let address_ok = match kind {
                ScannerKind::Rspamd => address.starts_with("http://") && address.len() > 7,
                _ => {
                    address.strip_prefix("unix:").is_some_and(|p| p.starts_with('/'))
                        || address.parse::<SocketAddr>().is_ok()
                }
            };
            if !address_ok {
                self.reporter.err(
                    "mtac::scan::address",
                    format!("`{address}` is not a scanner address"),
                    child.file,
                    child.node.span(),
                    "invalid address",
                    "clamd and spamd: \"unix:/run/clamav/clamd.ctl\" or \"127.0.0.1:783\"; rspamd: \"http://127.0.0.1:11333\"",
                );
                continue;
            }
            let timeout = match Self::prop(child, "timeout") {
                Some(e) => self.duration(e, child.file, "`timeout`").unwrap_or(30),
                None => 30,
            };
            let fail_open = match Self::prop(child, "fail") {
                Some(e) => match self.string(e, child.file, "`fail`").as_deref() {
                    Some("open") => true,
                    Some("closed") => false,
                    _ => {
                        self.reporter.err(
                            "mtac::scan::fail",
                            "`fail` is \"open\" (accept and log) or \"closed\" (451)".to_owned(),
                            child.file,
                            e.span(),
                            "invalid fail mode",
                            "",
                        );
                        false
                    }
                },
                None => false,
            };
            let score = |this: &mut Self, key: &str| {
                Self::prop(child, key)
                    .and_then(|e| this.integer(e, child.file, &format!("`{key}`"), -1000, 1000))
                    .and_then(|v| i32::try_from(v).ok())
            };
            let tag_score = score(self, "tag");
            let reject_score = score(self, "reject");
            if kind == ScannerKind::Clamav && (tag_score.is_some() || reject_score.is_some()) {
                self.reporter.err(
                    "mtac::scan::score",
                    "clamav finds viruses; it has no score".to_owned(),
                    child.file,
                    child.node.span(),
                    "scores on clamav",
                    "put tag= and reject= on spamassassin or rspamd",
                );
            }
            if let (Some(tag), Some(reject)) = (tag_score, reject_score) {
                if tag >= reject {
                    self.reporter.err(
                        "mtac::scan::thresholds",
                        format!("tag score {tag} is not below reject score {reject}"),
                        child.file,
                        child.node.span(),
                        "tag can never fire",
                        "mail scoring between tag and reject gets X-Spam headers; tag must be lower",
                    );
                }
            }
            farm.scanners.push(DraftScanner {
                kind,
                address,
                timeout,
                fail_open,
                tag_score,
                reject_score,
                origin: self.origin_of(child),
            });
        }
    }
}
