//! Top-level nodes: docs/policy.md section 2, "Top level" (`hostname`, `banner`, `spool`, `dns`,
//! `admin`, `state`); `farm` and `include` are dispatched in `mod.rs`.

use super::ir::Draft;
use super::read::relative_to;
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use kdl::KdlValue;
use mtac_ruleset::model::StateSettings;
use mtac_ruleset::syntax;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

impl Lowerer {
    pub(crate) fn hostname(&mut self, at: At<'_>, _dir: &Path, draft: &mut Draft) {
        let (node, file) = (at.node, at.file);
        self.shape(at, &[], 1, false);
        if let Some(value) = self.one_string(at, "a host name") {
            if syntax::is_fqdn(&value) {
                draft.hostname = Some((value, self.origin_of(at)));
            } else {
                self.reporter.err(
                    "mtac::hostname",
                    format!("`{value}` is not a fully qualified host name"),
                    file,
                    node.span(),
                    "not an FQDN",
                    "the host name goes into the greeting and Received headers: use e.g. \"mx1.example.net\"",
                );
            }
        }
    }

    pub(crate) fn banner(&mut self, at: At<'_>, _dir: &Path, draft: &mut Draft) {
        let (node, file) = (at.node, at.file);
        self.shape(at, &[], 1, false);
        if let Some(value) = self.one_string(at, "a banner") {
            if value.chars().any(|c| c.is_control()) || value.len() > 200 {
                self.reporter.err(
                    "mtac::banner",
                    "the banner must be one line of at most 200 characters".to_owned(),
                    file,
                    node.span(),
                    "invalid banner",
                    "",
                );
            } else {
                draft.banner = Some(value);
            }
        }
    }

    pub(crate) fn spool(&mut self, at: At<'_>, dir: &Path, draft: &mut Draft) {
        let file = at.file;
        self.shape(at, &["max-bytes"], 1, false);
        if let Some(value) = self.one_string(at, "a directory") {
            draft.spool = Some(relative_to(dir, value));
        }
        if let Some(entry) = Self::prop(at, "max-bytes") {
            if let Some(v) = self.size(entry, file, "`max-bytes`") {
                if v < 1024 * 1024 {
                    self.reporter.err(
                        "mtac::spool::max-bytes",
                        format!("a spool budget of {v} bytes holds hardly one message"),
                        file,
                        entry.span(),
                        "too small",
                        "give the bytes all messages in flight may hold at once, e.g. \"1GiB\"",
                    );
                } else {
                    draft.spool_max_bytes = Some(v);
                }
            }
        }
    }

    pub(crate) fn dns(&mut self, at: At<'_>, _dir: &Path, draft: &mut Draft) {
        let dns = &mut draft.dns;
        self.shape(at, &["timeout", "cache-size", "probe-interval"], 0, true);
        if let Some(entry) = Self::prop(at, "timeout") {
            if let Some(ms) = self.duration_ms(entry, at.file, "`timeout`") {
                if ms == 0 || ms > 30_000 {
                    self.reporter.err(
                        "mtac::dns::timeout",
                        format!("a DNS timeout of {ms} ms"),
                        at.file,
                        entry.span(),
                        "out of range",
                        "between 1 ms and 30 s; a DNS list that does not answer in a few seconds counts as not listed",
                    );
                } else {
                    dns.timeout_ms = ms;
                }
            }
        }
        if let Some(entry) = Self::prop(at, "cache-size") {
            if let Some(n) = self.u32_value(entry, at.file, "`cache-size`", 0) {
                dns.cache_size = n;
            }
        }
        if let Some(entry) = Self::prop(at, "probe-interval") {
            if let Some(secs) = self.duration(entry, at.file, "`probe-interval`") {
                dns.probe_interval = secs.max(10);
            }
        }
        for child in Self::children(at) {
            if child.node.name().value() != "nameserver" {
                self.unknown_node(child, &nodes::names(Place::In("dns")), "`dns`");
                continue;
            }
            self.shape(child, &[], usize::MAX, false);
            for entry in Self::args(child) {
                let Some(text) = self.string(entry, child.file, "a nameserver") else { continue };
                let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(&text);
                    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Some(address) => dns.nameservers.push(address),
                    None => self.reporter.err(
                        "mtac::dns::nameserver",
                        format!("`{text}` is not a nameserver address"),
                        child.file,
                        entry.span(),
                        "invalid address",
                        "write an IP address, optionally with a port: \"127.0.0.1\", \"[::1]:5353\"",
                    ),
                }
            }
        }
    }

    pub(crate) fn admin(&mut self, at: At<'_>, _dir: &Path, draft: &mut Draft) {
        let (node, file) = (at.node, at.file);
        self.shape(at, &["socket"], 1, false);
        if let Some(entry) = Self::prop(at, "socket") {
            match entry.value() {
                KdlValue::Bool(false) => draft.admin_socket = Some(None),
                KdlValue::String(path) if path.starts_with('/') && path.len() < 100 => {
                    draft.admin_socket = Some(Some(path.clone()));
                }
                _ => self.reporter.err(
                    "mtac::admin::socket",
                    "`socket` takes an absolute path (under 100 bytes) or #false".to_owned(),
                    file,
                    entry.span(),
                    "invalid admin socket",
                    "e.g. socket=\"/run/mtac/admin.sock\": state queries and unbans are served there only",
                ),
            }
        }
        let value = Self::args(at).next().map(|entry| entry.value().clone());
        match value {
            Some(KdlValue::Bool(false)) => draft.admin = Some(None),
            Some(KdlValue::String(text)) => match text.parse::<SocketAddr>() {
                Ok(address) => draft.admin = Some(Some(address)),
                Err(_) => self.reporter.err(
                    "mtac::admin::address",
                    format!("`{text}` is not an address:port"),
                    file,
                    node.span(),
                    "invalid admin address",
                    "the admin listener serves /metrics, /healthz, /readyz and /status: e.g. \"127.0.0.1:9325\", or #false to turn it off",
                ),
            },
            _ => self.reporter.err(
                "mtac::admin::address",
                "`admin` takes an address:port or #false".to_owned(),
                file,
                node.span(),
                "expected \"address:port\" or #false",
                "e.g. admin \"127.0.0.1:9325\"",
            ),
        }
    }

    /// `state "embedded" path="FILE"`, `state "redis" url="redis://…" [timeout=…] [on-failure=…]`
    /// or `state "redis-sentinel" sentinels="HOST:PORT …" service="NAME" [db=N] [timeout=…]
    /// [on-failure=…]`.
    pub(crate) fn state(&mut self, at: At<'_>, dir: &Path, draft: &mut Draft) {
        self.shape(at, &["path", "url", "timeout", "on-failure", "sentinels", "service", "db"], 1, false);
        let kind = self.one_string(at, "\"embedded\", \"redis\" or \"redis-sentinel\"");
        let text = |this: &mut Self, key: &str| Self::prop(at, key).and_then(|e| this.string(e, at.file, key));
        match kind.as_deref() {
            Some("embedded") => {
                let path = text(self, "path").map(|p| relative_to(dir, p));
                draft.state = Some(StateSettings::Embedded {
                    path: path.unwrap_or_else(|| mtac_ruleset::model::DEFAULT_STATE_PATH.to_owned()),
                });
            }
            Some("redis") => {
                let Some(url) = text(self, "url") else {
                    self.reporter.err(
                        "mtac::state::url",
                        "a Redis store needs its `url`".to_owned(),
                        at.file,
                        at.node.span(),
                        "no url",
                        "e.g. state \"redis\" url=\"redis://10.0.0.9:6379/0\"",
                    );
                    return;
                };
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
                    self.reporter.err(
                        "mtac::state::url",
                        format!("`{url}` is not a Redis URL"),
                        at.file,
                        at.node.span(),
                        "expected redis://HOST:PORT/DB or redis+unix:///PATH",
                        "TLS (rediss://) is not supported: keep Redis on the farm's private network",
                    );
                }
                let (timeout_ms, fail_open) = self.redis_failure(at);
                draft.state = Some(StateSettings::Redis { url, timeout_ms, fail_open });
            }
            Some("redis-sentinel") => {
                let sentinels: Vec<String> =
                    text(self, "sentinels").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
                let service = text(self, "service").unwrap_or_default();
                let bad = sentinels.iter().find(|s| !super::relay::valid_host_port(s));
                if sentinels.is_empty() || service.is_empty() || bad.is_some() {
                    self.reporter.err(
                        "mtac::state::sentinel",
                        match bad {
                            Some(bad) => format!("`{bad}` is not a sentinel's HOST:PORT"),
                            None => "a Redis Sentinel store needs `sentinels` and `service`".to_owned(),
                        },
                        at.file,
                        at.node.span(),
                        "invalid sentinel settings",
                        "e.g. state \"redis-sentinel\" sentinels=\"10.0.0.21:26379 10.0.0.22:26379 10.0.0.23:26379\" service=\"mtac\"",
                    );
                    return;
                }
                let db = match Self::prop(at, "db") {
                    Some(entry) => self.integer(entry, at.file, "`db`", 0, 1 << 20).unwrap_or(0),
                    None => 0,
                };
                let (timeout_ms, fail_open) = self.redis_failure(at);
                draft.state = Some(StateSettings::RedisSentinel { sentinels, service, db, timeout_ms, fail_open });
            }
            Some(other) => self.reporter.err(
                "mtac::state::kind",
                format!("unknown state store `{other}`"),
                at.file,
                at.node.span(),
                "expected \"embedded\", \"redis\" or \"redis-sentinel\"",
                "\"embedded\" keeps state in a file on the node; \"redis\" shares it across the farm; \
                 \"redis-sentinel\" follows a Redis primary across failovers",
            ),
            None => {}
        }
    }

    /// A Redis store's `timeout` (ms) and `on-failure` (true: accept).
    fn redis_failure(&mut self, at: At<'_>) -> (u32, bool) {
        let timeout_ms = match Self::prop(at, "timeout") {
            Some(entry) => self.duration_ms(entry, at.file, "`timeout`").unwrap_or(500),
            None => 500,
        };
        let on_failure = Self::prop(at, "on-failure").and_then(|e| self.string(e, at.file, "on-failure"));
        let fail_open = match on_failure.as_deref() {
            None | Some("defer") => false,
            Some("accept") => true,
            Some(other) => {
                self.reporter.err(
                    "mtac::state::on-failure",
                    format!("unknown failure mode `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"defer\" or \"accept\"",
                    "\"defer\" answers 451 while Redis is unreachable; \"accept\" lets mail through ungreylisted and logs it",
                );
                false
            }
        };
        (timeout_ms, fail_open)
    }
}
