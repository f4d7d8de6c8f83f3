//! External filters: docs/policy.md section 2, `milter` and `hook`.

use super::ir::DraftFarm;
use super::{At, Lowerer};
use mtac_ruleset::model::{Filter, FilterKind};
use std::path::Path;

/// Defaults: Postfix's `milter_connect_timeout` (30 s), `milter_command_timeout` (30 s) and
/// `milter_content_timeout` (300 s), shortened: the sender waits on every filter.
const CONNECT_TIMEOUT: u32 = 10;
const COMMAND_TIMEOUT: u32 = 30;
const TOTAL_TIMEOUT: u32 = 60;

impl Lowerer {
    /// `milter "ADDRESS" [name=] [timeout=] [connect-timeout=] [command-timeout=] [fail=]
    /// [discard=] [quarantine=] [recipients=]`.
    pub(crate) fn milter(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.filter(at, farm, FilterKind::Milter);
    }

    /// `hook "http://HOST:PORT/PATH" [name=] [timeout=] [connect-timeout=] [command-timeout=] [fail=]
    /// [ask-rcpt=]`.
    pub(crate) fn hook(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.filter(at, farm, FilterKind::Hook);
    }

    fn filter(&mut self, at: At<'_>, farm: &mut DraftFarm, kind: FilterKind) {
        let (what, mut allowed) = match kind {
            FilterKind::Milter => ("milter", vec!["discard", "quarantine", "recipients"]),
            FilterKind::Hook => ("hook", vec!["ask-rcpt"]),
        };
        allowed.extend(["name", "timeout", "connect-timeout", "command-timeout", "fail"]);
        self.shape(at, &allowed, 1, false);
        let Some(address) = self.one_string(at, &format!("the {what}'s address")) else { return };
        if !address_ok(kind, &address) {
            self.reporter.err(
                "mtac::filter::address",
                format!("`{address}` is not a {what} address"),
                at.file,
                at.node.span(),
                "invalid address",
                match kind {
                    FilterKind::Milter => {
                        "\"inet:127.0.0.1:8891\", \"inet:8891@127.0.0.1\" or \"unix:/run/opendkim/opendkim.sock\""
                    }
                    FilterKind::Hook => "an http:// URL with a host and port, e.g. \"http://127.0.0.1:8080/hook\"",
                },
            );
            return;
        }
        let name = match Self::prop(at, "name").and_then(|e| self.string(e, at.file, "`name`")) {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                n
            }
            Some(n) => {
                self.reporter.err(
                    "mtac::filter::name",
                    format!("`{n}` is not a {what} name"),
                    at.file,
                    at.node.span(),
                    "invalid name",
                    "letters, digits, `-` and `_`, at most 64: it labels logs and metrics",
                );
                return;
            }
            None => default_name(&address),
        };
        if farm.filters.iter().any(|f| f.name == name) {
            self.reporter.err(
                "mtac::filter::duplicate",
                format!("two filters are named `{name}`"),
                at.file,
                at.node.span(),
                "duplicate name",
                "give each milter and hook its own name=",
            );
            return;
        }
        let seconds = |this: &mut Self, key: &str, default: u32| match Self::prop(at, key) {
            Some(e) => this.duration(e, at.file, &format!("`{key}`")).filter(|s| *s > 0).unwrap_or(default),
            None => default,
        };
        let total_timeout = seconds(self, "timeout", TOTAL_TIMEOUT);
        let connect_timeout = seconds(self, "connect-timeout", CONNECT_TIMEOUT.min(total_timeout));
        let command_timeout = seconds(self, "command-timeout", COMMAND_TIMEOUT.min(total_timeout));
        let fail_open = self.filter_choice(
            at,
            what,
            "fail",
            ["closed", "open"],
            "\"closed\" (the default) answers 451; \"open\" lets the message through and logs",
        );
        let discard_accepts = self.filter_choice(
            at,
            what,
            "discard",
            ["refuse", "accept"],
            "\"refuse\" (the default) answers 550; \"accept\" answers 250 and drops the message",
        );
        let quarantine_header = self.filter_choice(
            at,
            what,
            "quarantine",
            ["refuse", "header"],
            "\"refuse\" (the default) answers 550; \"header\" relays the message with an X-Quarantine header",
        );
        let change_recipients = self.filter_choice(
            at,
            what,
            "recipients",
            ["refuse", "change"],
            "\"refuse\" (the default) answers 451 to a milter that adds or deletes recipients; \"change\" makes \
             the change (an added recipient must pass the farm's relay control)",
        );
        let ask_rcpt = kind == FilterKind::Hook && self.bool_prop(at, "ask-rcpt", false);
        farm.filters.push(Filter {
            kind,
            name,
            address,
            connect_timeout,
            command_timeout,
            total_timeout,
            fail_open,
            discard_accepts,
            quarantine_header,
            change_recipients,
            ask_rcpt,
        });
    }

    /// A two-valued property: `false` for the first (default) value, `true` for the second.
    fn filter_choice(&mut self, at: At<'_>, what: &str, key: &str, values: [&str; 2], help: &str) -> bool {
        let Some(entry) = Self::prop(at, key) else { return false };
        match self.string(entry, at.file, &format!("`{key}`")) {
            Some(v) if v == values[1] => true,
            Some(v) if v == values[0] => false,
            _ => {
                self.reporter.err(
                    "mtac::filter::value",
                    format!("`{what} {key}=` is \"{}\" or \"{}\"", values[0], values[1]),
                    at.file,
                    entry.span(),
                    "invalid value",
                    help,
                );
                false
            }
        }
    }
}

fn address_ok(kind: FilterKind, address: &str) -> bool {
    match kind {
        FilterKind::Milter => mtac_ruleset::syntax::milter_socket(address).is_some(),
        FilterKind::Hook => {
            address.strip_prefix("http://").and_then(|rest| rest.split('/').next()).is_some_and(|authority| {
                authority.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
            })
        }
    }
}

/// A name for logs and metrics when the policy gives none: the address's port or file name.
fn default_name(address: &str) -> String {
    let tail = address.rsplit(['/', ':', '@']).find(|s| !s.is_empty()).unwrap_or("filter");
    let name: String = tail.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').take(64).collect();
    if name.is_empty() {
        "filter".to_owned()
    } else {
        name
    }
}
