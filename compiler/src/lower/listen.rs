//! Listeners and limits: docs/policy.md section 2, `listen`, `limits` and `trust-loopback`.

use super::ir::{DraftFarm, Origin, Pos};
use super::{At, Lowerer};
use crate::diag::Diag;
use crate::nodes::{self, Place};
use mtac_ruleset::model::Listener;
use std::net::SocketAddr;
use std::path::Path;

impl Lowerer {
    pub(crate) fn listen(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["tls", "proxy-from"], 1, false);
        let Some(text) = self.one_string(at, "an address:port") else { return };
        let implicit_tls = match Self::prop(at, "tls") {
            Some(entry) => match self.string(entry, at.file, "`tls`").as_deref() {
                Some("implicit") => true,
                Some("starttls") => false,
                Some(other) => {
                    self.reporter.err(
                        "mtac::listen::tls",
                        format!("unknown TLS mode `{other}`"),
                        at.file,
                        entry.span(),
                        "expected \"implicit\" or \"starttls\"",
                        "implicit TLS from the first byte is port 465 (RFC 8314); STARTTLS is offered on the others when `tls` is configured",
                    );
                    false
                }
                None => false,
            },
            None => false,
        };
        let proxy_from = self.proxy_from(at);
        match text.parse::<SocketAddr>() {
            Ok(address) => {
                let origin = self.origin_of(at);
                if let Some((_, first)) = farm.listeners.iter().find(|(l, _)| l.address == address) {
                    let first = *first;
                    let source = self.reporter.source(at.file);
                    let first_span = self.reporter.span_of(first);
                    self.reporter.push(
                        Diag::error("mtac::listen::duplicate", format!("{address} is listened on twice"))
                            .at(&source, at.node.span(), "again here")
                            .at(&source, first_span, "first here"),
                    );
                } else {
                    farm.listeners.push((Listener { address, implicit_tls, proxy_from }, origin));
                }
            }
            Err(_) => self.reporter.err(
                "mtac::listen::address",
                format!("`{text}` is not an address:port"),
                at.file,
                at.node.span(),
                "invalid listen address",
                "write \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:587\" (IPv6 in brackets)",
            ),
        }
    }

    /// `proxy-from="NET NET…"`: the balancers allowed to speak the PROXY protocol here.
    fn proxy_from(&mut self, at: At<'_>) -> Vec<ipnet::IpNet> {
        let Some(entry) = Self::prop(at, "proxy-from") else { return Vec::new() };
        let Some(text) = self.string(entry, at.file, "`proxy-from`") else { return Vec::new() };
        let origin = Origin { file: at.file, pos: Pos::Span(entry.span()) };
        let mut nets: Vec<ipnet::IpNet> =
            text.split_whitespace().filter_map(|net| self.parse_net(net, origin)).collect();
        if nets.is_empty() && text.split_whitespace().next().is_none() {
            self.reporter.err(
                "mtac::listen::proxy-from",
                "`proxy-from` names no network".to_owned(),
                at.file,
                entry.span(),
                "empty",
                "name the load balancers' networks, e.g. proxy-from=\"10.0.0.0/24\"; leave `proxy-from` out for a listener that clients reach directly",
            );
        }
        nets.sort();
        nets.dedup();
        nets
    }

    pub(crate) fn limits(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let known = nodes::names(Place::In("limits"));
        for child in Self::children(at) {
            let name = child.node.name().value();
            if name == "timeout" {
                self.shape(child, &["command", "data", "relay", "pregreet"], 0, false);
                let l = &mut farm.limits;
                let set = |this: &mut Self, key: &str, slot: &mut u32| {
                    if let Some(entry) = Self::prop(child, key) {
                        if let Some(v) = this.duration(entry, child.file, &format!("timeout `{key}`")) {
                            *slot = v;
                        }
                    }
                };
                set(self, "command", &mut l.command_timeout);
                set(self, "data", &mut l.data_timeout);
                set(self, "relay", &mut l.relay_timeout);
                if let Some(entry) = Self::prop(child, "pregreet") {
                    if let Some(v) = self.duration(entry, child.file, "timeout `pregreet`") {
                        l.pregreet = Some(v);
                    }
                }
                for (key, value) in
                    [("command", l.command_timeout), ("data", l.data_timeout), ("relay", l.relay_timeout)]
                {
                    if value == 0 {
                        if let Some(entry) = Self::prop(child, key) {
                            self.reporter.err(
                                "mtac::limits::timeout",
                                format!("timeout `{key}` of 0 would never let a session through"),
                                child.file,
                                entry.span(),
                                "zero timeout",
                                "RFC 5321 4.5.3.2 recommends 5 minutes for commands and 10 for DATA",
                            );
                        }
                    }
                }
                continue;
            }
            if !known.contains(&name) {
                self.unknown_node(child, &known, "`limits`");
                continue;
            }
            self.shape(child, &[], 1, false);
            let Some(entry) = Self::args(child).next() else {
                self.reporter.err(
                    "mtac::missing-argument",
                    format!("`{name}` needs a value"),
                    child.file,
                    child.node.span(),
                    "value missing",
                    "",
                );
                continue;
            };
            let what = format!("`{name}`");
            match name {
                "connections" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.connections = v;
                    }
                }
                "connections-per-ip" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.connections_per_ip = v;
                    }
                }
                "transfers-per-ip" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.transfers_per_ip = v;
                    }
                }
                "message-size" => {
                    if let Some(v) = self.size(entry, child.file, &what) {
                        if v < 1024 {
                            self.reporter.err(
                                "mtac::limits::size",
                                format!("a message size of {v} bytes refuses nearly every message"),
                                child.file,
                                entry.span(),
                                "too small",
                                "write e.g. \"25MiB\"",
                            );
                        } else {
                            farm.limits.message_size = v;
                        }
                    }
                }
                "recipients" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        if v < 100 {
                            self.reporter.warn(
                                "mtac::limits::recipients",
                                format!("{v} recipients per message is below the 100 that RFC 5321 4.5.3.1.8 requires servers to accept"),
                                child.file,
                                entry.span(),
                                "below RFC minimum",
                                "senders split larger lists after a 452, so mail still arrives, only slower",
                            );
                        }
                        farm.limits.recipients = v;
                    }
                }
                "line-length" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 512) {
                        farm.limits.line_length = v;
                    }
                }
                "errors" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.errors = v;
                    }
                }
                "soft-errors" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.soft_errors = v;
                    }
                }
                _ => {}
            }
        }
    }

    pub(crate) fn trust_loopback(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 1, false);
        farm.trust_loopback = match Self::args(at).next() {
            Some(entry) => self.boolean(entry, at.file, "`trust-loopback`").unwrap_or(false),
            None => true,
        };
    }
}
