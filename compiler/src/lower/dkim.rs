//! DKIM signing: docs/policy.md section 2, `dkim-sign` and its `key`s. Each key file is read
//! here, under the same rules as list files (`crate::files`: inside the policy's tree or an
//! `--allow-dir`), and checked with the parser the node signs with
//! (`mtac_ruleset::dkim::DkimKey`), so `mtac check` finds a missing, unreadable, malformed or
//! weak key at the line that names it, not the node at its next reload.

use super::include::Named;
use super::ir::DraftFarm;
use super::read::relative_to;
use super::{At, Lowerer};
use crate::files;
use crate::nodes::{self, Place};
use mtac_ruleset::dkim::{DkimKey, KeyError};
use mtac_ruleset::model::{DkimSign, DkimSignKey};
use mtac_ruleset::syntax;
use std::path::Path;

/// The header fields signed unless `headers=` says otherwise: those a reader sees and a replay
/// or tampering would change (M3AAWG's and Gmail's advice), and the MIME fields that say how the
/// body is read, since a verifier that cannot trust them cannot trust the body hash either.
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The largest key file read: a PEM RSA-8192 key is under 7 KiB.
const KEY_FILE_LIMIT: u64 = 64 << 10;

impl Lowerer {
    pub(crate) fn dkim_sign(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["headers"], 0, true);
        let mut headers: Vec<String> = match Self::prop(at, "headers") {
            Some(entry) => self
                .string(entry, at.file, "`headers`")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            None => DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect(),
        };
        let mut seen = std::collections::HashSet::new();
        headers.retain(|h| seen.insert(h.to_ascii_lowercase()));
        if let Some(bad) = headers.iter().find(|h| !h.bytes().all(|b| b.is_ascii_graphic() && b != b':')) {
            self.reporter.err(
                "mtac::dkim::headers",
                format!("`{bad}` is not a header field name"),
                at.file,
                at.node.span(),
                "invalid field name",
                "headers=\"From To Subject Date\": field names separated by spaces",
            );
        }
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
            self.reporter.err(
                "mtac::dkim::headers",
                "`dkim-sign headers=` must include From".to_owned(),
                at.file,
                at.node.span(),
                "From not signed",
                "RFC 6376 §5.4 requires the From field to be signed; DMARC aligns on it",
            );
        }
        // From once more than it occurs: a From added in transit then breaks the signature.
        headers.push("From".to_owned());
        let mut keys: Vec<DkimSignKey> = Vec::new();
        for child in Self::children(at) {
            if child.node.name().value() != "key" {
                self.unknown_node(child, &nodes::names(Place::In("dkim-sign")), "`dkim-sign`");
                continue;
            }
            if let Some(key) = self.dkim_key(child, dir) {
                if keys.iter().any(|k| k.domain == key.domain) {
                    self.reporter.err(
                        "mtac::dkim::duplicate",
                        format!("two keys for the domain `{}`", key.domain),
                        child.file,
                        child.node.span(),
                        "second key",
                        "one key per signing domain; to roll a key over, publish the new selector, then switch",
                    );
                    continue;
                }
                keys.push(key);
            }
        }
        if keys.is_empty() && Self::children(at).next().is_none() {
            self.reporter.err(
                "mtac::dkim::no-key",
                "`dkim-sign` has no key".to_owned(),
                at.file,
                at.node.span(),
                "signs nothing",
                "dkim-sign { key \"example.org\" selector=\"s2026\" file=\"keys/example.org.pem\" }",
            );
        }
        keys.sort_by(|a, b| a.domain.cmp(&b.domain));
        farm.dkim_sign = Some((DkimSign { keys, headers }, self.origin_of(at)));
    }

    /// One `key "DOMAIN" selector="S" file="F"`, its file read and checked.
    fn dkim_key(&mut self, at: At<'_>, dir: &Path) -> Option<DkimSignKey> {
        self.shape(at, &["selector", "file"], 1, false);
        let domain = self.one_string(at, "the signing domain")?;
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut ok = true;
        if !syntax::is_fqdn(&domain) || !domain.is_ascii() {
            self.reporter.err(
                "mtac::dkim::domain",
                format!("`{domain}` is not a domain to sign for"),
                at.file,
                at.node.span(),
                "not a domain",
                "the domain of the From addresses to sign, e.g. \"example.org\" (IDNs in their xn-- form)",
            );
            ok = false;
        }
        let selector = Self::prop(at, "selector").and_then(|e| self.string(e, at.file, "`selector`"));
        let file = Self::prop(at, "file").and_then(|e| self.string(e, at.file, "`file`"));
        let (Some(selector), Some(file)) = (selector, file) else {
            self.reporter.err(
                "mtac::dkim::key",
                "a `key` needs selector= and file=".to_owned(),
                at.file,
                at.node.span(),
                "incomplete",
                "key \"example.org\" selector=\"s2026\" file=\"keys/example.org.pem\"",
            );
            return None;
        };
        // RFC 6376 §3.1: a selector is one or more labels (sub-domains of `_domainkey`).
        if !syntax::is_hostname(&selector) || !selector.is_ascii() {
            self.reporter.err(
                "mtac::dkim::selector",
                format!("`{selector}` is not a selector"),
                at.file,
                at.node.span(),
                "not a DNS label",
                "letters, digits and hyphens, e.g. selector=\"s2026\" (published at s2026._domainkey.DOMAIN)",
            );
            ok = false;
        }
        let span = Self::prop(at, "file").map_or(at.node.span(), |e| e.span());
        // Stored as written (made absolute), not canonical: a key that is a link to the current
        // file of a rotation keeps following the link on the node.
        let path = relative_to(dir, file);
        let text = match self.trees.resolve(Path::new(&path)) {
            Ok(canonical) => files::read_regular(&canonical, KEY_FILE_LIMIT),
            Err(refusal) => Err(refusal),
        };
        let text = match text {
            Ok(text) => text,
            Err(refusal) => {
                self.refuse(Named::Key, Path::new(&path), refusal, at.file, span);
                return None;
            }
        };
        match DkimKey::from_pem(text.as_bytes()) {
            Ok(_) => {}
            Err(e) => {
                let (code, label, help) = match e {
                    KeyError::Weak { .. } => (
                        "mtac::dkim::weak-key",
                        "too weak",
                        "make a new key: openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out KEY.pem \
                         (or -algorithm ed25519, with an RSA key beside it: not every verifier knows Ed25519)",
                    ),
                    _ => (
                        "mtac::dkim::key",
                        "unusable key",
                        "a PEM private key: RSA (PKCS#8 or PKCS#1) of 2048 bits or more, or Ed25519 (PKCS#8)",
                    ),
                };
                self.reporter.err(code, format!("DKIM key {path}: {e}"), at.file, span, label, help);
                return None;
            }
        }
        ok.then_some(DkimSignKey { domain, selector, file: path })
    }
}
