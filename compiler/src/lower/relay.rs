//! The way out of a farm: docs/policy.md section 2, `relay`, `deliver` and `bare-line-ends`.

use super::ir::{DraftFarm, DraftRelay};
use super::read::relative_to;
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use mtac_ruleset::model::{Backend, BackendProtocol, BackendTls, BarePolicy};
use mtac_ruleset::syntax;
use std::net::SocketAddr;
use std::path::Path;

impl Lowerer {
    pub(crate) fn relay(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let mut backends = Vec::new();
        for child in Self::children(at) {
            if child.node.name().value() != "backend" {
                self.unknown_node(child, &nodes::names(Place::In("relay")), "`relay`");
                continue;
            }
            self.shape(child, &["tls", "ca", "name"], 1, false);
            let Some(url) = self.one_string(child, "a back end URL") else { continue };
            let parsed = if let Some(rest) = url.strip_prefix("smtp://") {
                Some((BackendProtocol::Smtp, rest))
            } else {
                url.strip_prefix("lmtp://").map(|rest| (BackendProtocol::Lmtp, rest))
            };
            match parsed {
                Some((protocol, rest)) if valid_host_port(rest) => {
                    if let Some(tls) = self.backend_tls(child, dir, rest) {
                        backends.push(Backend { protocol, address: rest.to_owned(), tls });
                    }
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

/// The largest CA file read: a distribution's whole bundle is about 200 KiB.
const CA_FILE_LIMIT: u64 = 4 << 20;

impl Lowerer {
    /// `tls=`, `ca=` and `name=` of one back end. `ca=` and `name=` say how to verify, so they
    /// belong to `tls="required"` only: written beside another mode they would promise a check
    /// that is never made.
    fn backend_tls(&mut self, at: At<'_>, dir: &Path, address: &str) -> Option<BackendTls> {
        let mode = match Self::prop(at, "tls") {
            Some(entry) => self.string(entry, at.file, "`tls`")?,
            None => "opportunistic".to_owned(),
        };
        let ca = Self::prop(at, "ca").and_then(|e| self.string(e, at.file, "`ca`"));
        let name = Self::prop(at, "name").and_then(|e| self.string(e, at.file, "`name`"));
        match mode.as_str() {
            "off" | "opportunistic" => {
                if ca.is_some() || name.is_some() {
                    self.reporter.err(
                        "mtac::relay::tls",
                        format!("`ca=` and `name=` verify a certificate, which tls=\"{mode}\" never does"),
                        at.file,
                        at.node.span(),
                        "verification without tls=\"required\"",
                        "write tls=\"required\" to verify the back end's certificate, or drop ca= and name=",
                    );
                    return None;
                }
                Some(if mode == "off" { BackendTls::Off } else { BackendTls::Opportunistic })
            }
            "required" => {
                let name = name.unwrap_or_else(|| host_of(address).to_owned());
                if !(syntax::is_hostname(&name) || name.parse::<std::net::IpAddr>().is_ok()) {
                    self.reporter.err(
                        "mtac::relay::tls",
                        format!("`{name}` is not a host name or IP address to verify"),
                        at.file,
                        at.node.span(),
                        "invalid name",
                        "name=\"store.example.net\": the name the back end's certificate carries",
                    );
                    return None;
                }
                let ca = match ca {
                    Some(path) => Some(self.ca_file(at, relative_to(dir, path))?),
                    None => None,
                };
                Some(BackendTls::Required { ca, name })
            }
            other => {
                self.reporter.err(
                    "mtac::relay::tls",
                    format!("unknown choice tls=\"{other}\""),
                    at.file,
                    at.node.span(),
                    "expected \"required\", \"opportunistic\" or \"off\"",
                    "required verifies the certificate and never relays in clear; opportunistic (the default) \
                     encrypts when the back end offers STARTTLS",
                );
                None
            }
        }
    }

    /// The CA file must hold at least one PEM certificate that parses. It lives outside the
    /// policy's tree (/etc/…) like the farm's certificate, so only `files::read_regular`'s
    /// checks apply (a policy naming /dev/zero must not hang `mtac check`).
    fn ca_file(&mut self, at: At<'_>, path: String) -> Option<String> {
        let problem = match crate::files::read_regular(Path::new(&path), CA_FILE_LIMIT) {
            Ok(text) => {
                let mut certificates = x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()).peekable();
                match certificates.peek() {
                    None => Some("no PEM certificate in it".to_owned()),
                    Some(_) => certificates
                        .filter(|pem| pem.as_ref().map(|p| p.label == "CERTIFICATE").unwrap_or(true))
                        .find_map(|pem| match pem {
                            Err(e) => Some(e.to_string()),
                            Ok(pem) => pem.parse_x509().err().map(|e| e.to_string()),
                        }),
                }
            }
            Err(e) => Some(e.to_string()),
        };
        match problem {
            None => Some(path),
            Some(problem) => {
                self.reporter.err(
                    "mtac::relay::ca",
                    format!("CA file {path}: {problem}"),
                    at.file,
                    at.node.span(),
                    "unusable CA file",
                    "the PEM certificates of the authorities that sign the back end's certificate",
                );
                None
            }
        }
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

pub(crate) fn valid_host_port(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => syntax::is_hostname(host) && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
