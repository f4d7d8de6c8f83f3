//! Submission: docs/policy.md section 2, `tls`, `auth` (with its password hashes and
//! `may-send-as`) and `directory`.

use super::ir::{DraftFarm, DraftSni, DraftTls, Origin, Sources};
use super::read::relative_to;
use super::{At, Lowerer};
use crate::diag::Diag;
use crate::nodes::{self, Place};
use miette::SourceSpan;
use mtac_ruleset::model::{Auth, AuthBackend, Directory, FarmKind};
use mtac_ruleset::syntax;
use std::path::Path;

/// OWASP's minimum Argon2id memory cost, in KiB (19 MiB), and its time cost at that memory.
const MIN_ARGON2_M_KIB: u32 = 19_456;
const MIN_ARGON2_T: u32 = 2;

impl Lowerer {
    pub(crate) fn tls(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["certificate", "key", "required", "name"], 0, true);
        let get = |this: &mut Self, key: &str| match Self::prop(at, key) {
            Some(e) => this.string(e, at.file, &format!("`{key}`")),
            None => {
                this.reporter.err(
                    "mtac::tls",
                    format!("`tls` needs `{key}`"),
                    at.file,
                    at.node.span(),
                    &format!("{key} missing"),
                    "tls certificate=\"/etc/mtac/cert.pem\" key=\"/etc/mtac/key.pem\"",
                );
                None
            }
        };
        let certificate = get(self, "certificate");
        let key = get(self, "key");
        let required = self.bool_prop(at, "required", farm.kind == FarmKind::Submission);
        let name = Self::prop(at, "name").and_then(|e| self.string(e, at.file, "`name`"));
        let mut sni: Vec<DraftSni> = Vec::new();
        for child in Self::children(at) {
            match child.node.name().value() {
                "sni" => {
                    if let Some(entry) = self.sni(child, dir) {
                        if sni.iter().any(|s| s.name == entry.name) {
                            self.reporter.err(
                                "mtac::tls::sni",
                                format!("`sni \"{}\"` is given twice", entry.name),
                                child.file,
                                child.node.span(),
                                "duplicate",
                                "one certificate per name",
                            );
                        } else {
                            sni.push(entry);
                        }
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("tls")), "`tls`"),
            }
        }
        if let (Some(certificate), Some(key)) = (certificate, key) {
            // Relative paths are relative to the policy file, like every other path it names.
            let (certificate, key) = (relative_to(dir, certificate), relative_to(dir, key));
            farm.tls = Some(DraftTls { certificate, key, required, name, sni, origin: self.origin_of(at) });
        }
    }

    /// `sni "NAME" certificate="…" key="…"`: the certificate for clients that ask for NAME
    /// (`*.example.com`: any one label under it).
    fn sni(&mut self, at: At<'_>, dir: &Path) -> Option<DraftSni> {
        self.shape(at, &["certificate", "key"], 1, false);
        let name = self.one_string(at, "the host name clients ask for")?.to_ascii_lowercase();
        let host = name.strip_prefix("*.").unwrap_or(&name);
        if !mtac_ruleset::syntax::is_hostname(host) || !host.contains('.') {
            self.reporter.err(
                "mtac::tls::sni",
                format!("`{name}` is not a host name"),
                at.file,
                at.node.span(),
                "not a host name",
                "e.g. sni \"mail.customer.example\" or sni \"*.customer.example\"",
            );
            return None;
        }
        let mut file = |key: &str| match Self::prop(at, key) {
            Some(e) => self.string(e, at.file, &format!("`{key}`")).map(|p| relative_to(dir, p)),
            None => {
                self.reporter.err(
                    "mtac::tls::sni",
                    format!("`sni` needs `{key}`"),
                    at.file,
                    at.node.span(),
                    &format!("{key} missing"),
                    "sni \"mail.customer.example\" certificate=\"/etc/mtac/customer.pem\" key=\"/etc/mtac/customer.key\"",
                );
                None
            }
        };
        let certificate = file("certificate");
        let key = file("key");
        Some(DraftSni { name, certificate: certificate?, key: key?, origin: self.origin_of(at) })
    }

    pub(crate) fn auth(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["mechanisms", "max-failures", "cache", "null-sender", "header-from"], 0, true);
        let mechanisms: Vec<String> = match Self::prop(at, "mechanisms") {
            Some(e) => self
                .string(e, at.file, "`mechanisms`")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_ascii_uppercase)
                .collect(),
            None => vec!["PLAIN".to_owned(), "LOGIN".to_owned()],
        };
        for m in &mechanisms {
            if m != "PLAIN" && m != "LOGIN" {
                self.reporter.err(
                    "mtac::auth::mechanism",
                    format!("unsupported AUTH mechanism `{m}`"),
                    at.file,
                    at.node.span(),
                    "unsupported",
                    "mtac offers PLAIN and LOGIN, inside TLS only",
                );
            }
        }
        let max_failures =
            Self::prop(at, "max-failures").and_then(|e| self.u32_value(e, at.file, "`max-failures`", 1)).unwrap_or(5);
        let cache_ttl = Self::prop(at, "cache").and_then(|e| self.duration(e, at.file, "`cache`")).unwrap_or(0);
        // Off unless asked for, like Postfix's reject_authenticated_sender_login_mismatch: no
        // user owns `<>`, and mail without a return path cannot be traced back to the account.
        let null_sender = self.bool_prop(at, "null-sender", false);
        let mut backend = None;
        let mut users = Vec::new();
        let mut sender_aliases = Vec::new();
        for child in Self::children(at) {
            match child.node.name().value() {
                "may-send-as" => self.sender_aliases(child, dir, &mut sender_aliases),
                "ldap" => {
                    self.shape(child, &["url", "bind-dn"], 0, false);
                    let url = Self::prop(child, "url").and_then(|e| self.string(e, child.file, "`url`"));
                    let dn = Self::prop(child, "bind-dn").and_then(|e| self.string(e, child.file, "`bind-dn`"));
                    match (url, dn) {
                        (Some(url), Some(dn))
                            if (url.starts_with("ldap://") || url.starts_with("ldaps://")) && dn.contains("{user}") =>
                        {
                            backend = Some(AuthBackend::Ldap { url, bind_dn_template: dn })
                        }
                        _ => self.reporter.err(
                            "mtac::auth::ldap",
                            "`ldap` needs url=\"ldap://…\" and bind-dn containing {user}".to_owned(),
                            child.file,
                            child.node.span(),
                            "incomplete",
                            "e.g. ldap url=\"ldap://127.0.0.1:389\" bind-dn=\"uid={user},ou=people,dc=example,dc=com\"",
                        ),
                    }
                }
                "user" => {
                    self.shape(child, &["hash"], 1, false);
                    let name = self.one_string(child, "a user name");
                    let hash = Self::prop(child, "hash").and_then(|e| self.string(e, child.file, "`hash`"));
                    match (name, hash) {
                        (Some(name), Some(hash)) if hash.starts_with("$argon2") => {
                            if let Some(entry) = Self::prop(child, "hash") {
                                self.check_hash(&name, &hash, child.file, entry.span());
                            }
                            users.push((name, hash))
                        }
                        (Some(_), _) => self.reporter.err(
                            "mtac::auth::hash",
                            "a user needs hash= with a modern password hash (PHC string)".to_owned(),
                            child.file,
                            child.node.span(),
                            "missing or weak hash",
                            "Argon2 PHC strings only ($argon2id$v=19$…, as `mtac hash-password` prints them); plain text, crypt(3), scrypt and pbkdf2 hashes are refused",
                        ),
                        _ => {}
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("auth")), "`auth`"),
            }
        }
        let backend = match (backend, users.is_empty()) {
            (Some(_), false) => {
                self.reporter.err(
                    "mtac::auth::backend",
                    "`auth` has both `ldap` and `user` entries".to_owned(),
                    at.file,
                    at.node.span(),
                    "two credential sources",
                    "choose one: the directory (`ldap`) or compiled-in users (`user`)",
                );
                return;
            }
            (Some(b), true) => b,
            (None, false) => AuthBackend::Table(users),
            (None, true) => {
                self.reporter.err(
                    "mtac::auth::backend",
                    "`auth` has no credential source".to_owned(),
                    at.file,
                    at.node.span(),
                    "no ldap and no user",
                    "add `ldap url=… bind-dn=…` or `user \"alice\" hash=\"$argon2id$…\"` entries",
                );
                return;
            }
        };
        sender_aliases.sort_unstable();
        sender_aliases.dedup();
        let header_from_owned = match Self::prop(at, "header-from")
            .and_then(|e| self.string(e, at.file, "`header-from`"))
            .as_deref()
        {
            None | Some("any") => false,
            Some("owned") => true,
            Some(other) => {
                self.reporter.err(
                        "mtac::auth::header-from",
                        format!("unknown header-from rule `{other}`"),
                        at.file,
                        at.node.span(),
                        "expected \"owned\" or \"any\"",
                        "\"owned\": every From address must be one the user may send as (like MAIL FROM); \"any\" (the default) does not look",
                    );
                false
            }
        };
        let auth = Auth {
            mechanisms,
            backend,
            max_failures,
            cache_ttl,
            sender_aliases,
            null_sender,
            header_from_owned,
            unknown_user_cost: std::sync::OnceLock::new(),
        };
        farm.auth = Some((auth, self.origin_of(at)));
    }

    /// A user's Argon2 PHC string: it must parse as the node will parse it, and should be at
    /// least as strong as OWASP's minimum (Argon2id, m=19456 KiB, t=2), which is also what the
    /// `argon2` crate makes by default. A weak hash is a warning, not an error: it still works,
    /// but a stolen ruleset's passwords fall to a GPU quickly.
    fn check_hash(&mut self, user: &str, phc: &str, file: usize, span: SourceSpan) {
        let parsed = argon2::password_hash::PasswordHash::new(phc)
            .map_err(|e| e.to_string())
            .and_then(|hash| argon2::Params::try_from(&hash).map(|p| (hash.algorithm, p)).map_err(|e| e.to_string()));
        let (algorithm, params) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                self.reporter.err(
                    "mtac::auth::hash",
                    format!("the password hash of user `{user}` is not a valid Argon2 PHC string: {e}"),
                    file,
                    span,
                    "unreadable hash",
                    "paste the whole string `mtac hash-password` prints (or the `argon2` tool's -e output)",
                );
                return;
            }
        };
        let mut weak = Vec::new();
        if algorithm.as_str() != "argon2id" {
            weak.push(format!("{algorithm} instead of argon2id"));
        }
        if params.m_cost() < MIN_ARGON2_M_KIB {
            weak.push(format!("m={} KiB (below {MIN_ARGON2_M_KIB})", params.m_cost()));
        }
        if params.t_cost() < MIN_ARGON2_T {
            weak.push(format!("t={} (below {MIN_ARGON2_T})", params.t_cost()));
        }
        if !weak.is_empty() {
            self.reporter.warn(
                "mtac::auth::weak-hash",
                format!("the password hash of user `{user}` is weak: {}", weak.join(", ")),
                file,
                span,
                "weak hash",
                "hash it again with Argon2id, m=19456 or more, t=2 or more: mtac hash-password --user USER",
            );
        }
    }

    /// `may-send-as "USER" "ADDRESS"…`, or `may-send-as file="…"` with lines `USER ADDRESS…`.
    fn sender_aliases(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<(String, String)>) {
        self.shape(at, &["file"], usize::MAX, false);
        let inline = Self::args(at).count();
        let mut values = Vec::new();
        self.values(at, dir, &mut values, &mut Sources::default());
        // The arguments are one line ("USER ADDRESS…"); each line of the file is another.
        let mut lines: Vec<(String, Origin)> = Vec::new();
        if inline > 0 {
            let joined = values.iter().take(inline).map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(" ");
            lines.push((joined, self.origin_of(at)));
        }
        lines.extend(values.into_iter().skip(inline));
        for (line, origin) in lines {
            let mut words = line.split_whitespace();
            let user = words.next().unwrap_or_default().to_ascii_lowercase();
            let addresses: Vec<&str> = words.collect();
            if addresses.is_empty() {
                self.reporter.report(
                    Diag::error("mtac::auth::may-send-as", format!("`{line}` names no address"))
                        .help("write the user, then the addresses they may send as: may-send-as \"alice\" \"sales@example.com\""),
                    origin,
                    "user without addresses",
                );
            }
            for address in addresses {
                if syntax::is_mailbox(address) {
                    out.push((user.clone(), address.to_ascii_lowercase()));
                } else {
                    self.reporter.report(
                        Diag::error("mtac::address", format!("`{address}` is not a valid address"))
                            .help("write local-part@domain, e.g. sales@example.com"),
                        origin,
                        "invalid address",
                    );
                }
            }
        }
    }

    /// `directory "ldap://…" base="…" { attributes …; filter …; bind …; cache … }`: recipients
    /// of the local domains validated against LDAP at RCPT.
    pub(crate) fn directory(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["base", "timeout", "pool", "lookups"], 1, true);
        let url = self.one_string(at, "the directory's URL");
        let url_ok = url.as_deref().is_some_and(|u| {
            (u.starts_with("ldap://") || u.starts_with("ldaps://"))
                && u.split_once("://").is_some_and(|(_, h)| !h.is_empty())
        });
        if url.is_some() && !url_ok {
            self.reporter.err(
                "mtac::directory::url",
                "the directory needs an ldap:// or ldaps:// URL".to_owned(),
                at.file,
                at.node.span(),
                "not an LDAP URL",
                "e.g. directory \"ldap://127.0.0.1:389\" base=\"ou=people,dc=example,dc=com\"",
            );
        }
        let base = Self::prop(at, "base").and_then(|e| self.string(e, at.file, "`base`"));
        if base.is_none() {
            self.reporter.err(
                "mtac::directory::base",
                "the directory needs base=, the subtree to search".to_owned(),
                at.file,
                at.node.span(),
                "no search base",
                "e.g. base=\"ou=people,dc=example,dc=com\"",
            );
        }
        let mut timeout_ms = 2000;
        if let Some(entry) = Self::prop(at, "timeout") {
            match self.duration_ms(entry, at.file, "`timeout`") {
                // Zero would defer every recipient; minutes would hold every RCPT hostage.
                Some(ms @ 1..=30_000) => timeout_ms = ms,
                Some(_) => self.reporter.err(
                    "mtac::range",
                    "the directory's `timeout` must be between 1ms and 30s".to_owned(),
                    at.file,
                    entry.span(),
                    "out of range",
                    "a directory slower than that is down, as far as a client waiting at RCPT is concerned",
                ),
                None => {}
            }
        }
        let pool = Self::prop(at, "pool")
            .and_then(|e| self.integer(e, at.file, "`pool`", 1, 256))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(4);
        let lookups = self.bool_prop(at, "lookups", true);
        let mut attributes = Vec::new();
        let mut filter = None;
        let (mut bind_dn, mut bind_password_file) = (None, None);
        let (mut positive_ttl, mut negative_ttl, mut cache_size) = (600, 60, 100_000);
        for child in Self::children(at) {
            match child.node.name().value() {
                "attributes" => {
                    self.shape(child, &[], usize::MAX, false);
                    for entry in Self::args(child) {
                        if let Some(a) = self.string(entry, child.file, "an attribute name") {
                            if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';') {
                                self.reporter.err(
                                    "mtac::directory::attribute",
                                    format!("`{a}` is not an LDAP attribute name"),
                                    child.file,
                                    entry.span(),
                                    "invalid name",
                                    "e.g. attributes \"mail\" \"mailAlternateAddress\"",
                                );
                            } else {
                                attributes.push(a);
                            }
                        }
                    }
                }
                "filter" => {
                    self.shape(child, &[], 1, false);
                    if let Some(f) = self.one_string(child, "an LDAP filter") {
                        let balanced = f.starts_with('(') && f.ends_with(')') && parens_balance(&f);
                        if !f.contains("{address}") || !balanced {
                            self.reporter.err(
                                "mtac::directory::filter",
                                "the filter must be a parenthesised RFC 4515 filter containing {address}".to_owned(),
                                child.file,
                                child.node.span(),
                                if balanced { "no {address}" } else { "unbalanced parentheses" },
                                "e.g. filter \"(&(objectClass=inetOrgPerson)(|(mail={address})(mailAlternateAddress={address})))\"",
                            );
                        } else {
                            filter = Some(f);
                        }
                    }
                }
                "bind" => {
                    self.shape(child, &["password-file"], 1, false);
                    bind_dn = self.one_string(child, "the DN to bind as");
                    bind_password_file = Self::prop(child, "password-file")
                        .and_then(|e| self.string(e, child.file, "`password-file`"))
                        .map(|f| relative_to(dir, f));
                    if bind_password_file.is_none() {
                        self.reporter.err(
                            "mtac::directory::bind",
                            "`bind` needs password-file=, a file holding the password".to_owned(),
                            child.file,
                            child.node.span(),
                            "no password",
                            "the node reads the file when it loads the ruleset: the password never enters the ruleset",
                        );
                    }
                }
                "cache" => {
                    self.shape(child, &["positive", "negative", "size"], 0, false);
                    if let Some(e) = Self::prop(child, "positive") {
                        positive_ttl = self.duration(e, child.file, "`positive`").unwrap_or(positive_ttl);
                    }
                    if let Some(e) = Self::prop(child, "negative") {
                        negative_ttl = self.duration(e, child.file, "`negative`").unwrap_or(negative_ttl);
                    }
                    if let Some(e) = Self::prop(child, "size") {
                        cache_size = self.u32_value(e, child.file, "`size`", 0).unwrap_or(cache_size);
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("directory")), "`directory`"),
            }
        }
        if attributes.is_empty() {
            attributes.push("mail".to_owned());
        }
        let filter = filter.unwrap_or_else(|| match attributes.as_slice() {
            [one] => format!("({one}={{address}})"),
            many => format!("(|{})", many.iter().map(|a| format!("({a}={{address}})")).collect::<String>()),
        });
        if let (Some(url), Some(base), true) = (url, base, url_ok) {
            let directory = Directory {
                url,
                base,
                filter,
                attributes,
                bind_dn,
                bind_password_file,
                timeout_ms,
                pool,
                positive_ttl,
                negative_ttl,
                cache_size,
                lookups,
                exported: 0,
            };
            farm.directory = Some((directory, self.origin_of(at)));
        }
    }
}

/// Whether every `(` of an LDAP filter is closed, and none closes early.
fn parens_balance(filter: &str) -> bool {
    let mut depth = 0i32;
    for c in filter.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}
