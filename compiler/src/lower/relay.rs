//! The way out of a farm: docs/policy.md section 2, `relay`, `deliver` and `bare-line-ends`.

use super::ir::{DraftFarm, DraftRelay};
use super::read::relative_to;
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use mtac_ruleset::model::{Backend, BackendProtocol, BarePolicy};
use mtac_ruleset::syntax;
use std::net::SocketAddr;
use std::path::Path;

impl Lowerer {
    pub(crate) fn relay(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let mut backends = Vec::new();
        for child in Self::children(at) {
            if child.node.name().value() != "backend" {
                self.unknown_node(child, &nodes::names(Place::In("relay")), "`relay`");
                continue;
            }
            self.shape(child, &[], 1, false);
            let Some(url) = self.one_string(child, "a back end URL") else { continue };
            let parsed = if let Some(rest) = url.strip_prefix("smtp://") {
                Some((BackendProtocol::Smtp, rest))
            } else {
                url.strip_prefix("lmtp://").map(|rest| (BackendProtocol::Lmtp, rest))
            };
            match parsed {
                Some((protocol, rest)) if valid_host_port(rest) => {
                    backends.push(Backend { protocol, address: rest.to_owned() })
                }
                _ => self.reporter.err(
                    "mtac::relay::backend",
                    format!("`{url}` is not a back end URL"),
                    child.file,
                    child.node.span(),
                    "invalid back end",
                    "write \"smtp://host:port\" or \"lmtp://host:port\", e.g. \"smtp://10.0.0.5:25\"",
                ),
            }
        }
        if backends.is_empty() {
            self.reporter.err(
                "mtac::relay::empty",
                "`relay` lists no back end".to_owned(),
                at.file,
                at.node.span(),
                "no back end",
                "add `backend \"smtp://10.0.0.5:25\"` (several for failover, tried in order)",
            );
            return;
        }
        farm.relay = Some((DraftRelay::Backends(backends), self.origin_of(at)));
    }

    pub(crate) fn deliver(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["maildir"], 0, false);
        match Self::prop(at, "maildir") {
            Some(entry) => {
                if let Some(maildir) = self.string(entry, at.file, "`maildir`") {
                    farm.relay = Some((DraftRelay::Maildir(relative_to(dir, maildir)), self.origin_of(at)));
                }
            }
            None => self.reporter.err(
                "mtac::deliver",
                "`deliver` needs maildir=\"DIR\"".to_owned(),
                at.file,
                at.node.span(),
                "no maildir",
                "e.g. deliver maildir=\"/var/mail/quickstart\"",
            ),
        }
    }

    pub(crate) fn bare_line_ends(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 1, false);
        if let Some(value) = self.one_string(at, "\"reject\" or \"normalize\"") {
            match value.as_str() {
                "reject" => farm.bare_line_ends = BarePolicy::Reject,
                "normalize" => farm.bare_line_ends = BarePolicy::Normalize,
                other => self.reporter.err(
                    "mtac::bare-line-ends",
                    format!("unknown choice `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"reject\" or \"normalize\"",
                    "reject refuses messages with bare CR, bare LF or NUL (RFC 5321 2.3.8); normalize repairs them",
                ),
            }
        }
    }
}

fn valid_host_port(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => syntax::is_hostname(host) && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
