//! Includes and standard policies: docs/policy.md section 1, "Includes and standard policies",
//! and section 2, `include`; the refusals of named files (includes and lists) live here too.

use super::{At, Lowerer};
use crate::diag::did_you_mean;
use crate::files::{self, Refusal};
use kdl::KdlDocument;
use miette::SourceSpan;
use std::path::{Path, PathBuf};

/// Standard fragments shipped in `policies/`, embedded so `include "mtac:NAME"` works on any node.
pub const STANDARD_POLICIES: &[(&str, &str)] = &[
    ("rfc-hygiene", include_str!("../../../policies/rfc-hygiene.kdl")),
    ("role-accounts", include_str!("../../../policies/role-accounts.kdl")),
    ("strict-failover", include_str!("../../../policies/strict-failover.kdl")),
    ("dnsbl-spamhaus", include_str!("../../../policies/dnsbl-spamhaus.kdl")),
    ("sender-auth", include_str!("../../../policies/sender-auth.kdl")),
];

impl Lowerer {
    /// Read an included file; returns its document, file index and directory.
    pub(super) fn include(&mut self, at: At<'_>, dir: &Path) -> Option<(KdlDocument, usize, PathBuf)> {
        let target = self.one_string(at, "a file to include")?;
        self.includes += 1;
        if self.includes > files::MAX_INCLUDES {
            // Said once: after the cap every include is refused, and a doubling chain has millions.
            if self.includes == files::MAX_INCLUDES + 1 {
                self.reporter.err(
                    "mtac::include::too-many",
                    format!("more than {} includes in one policy", files::MAX_INCLUDES),
                    at.file,
                    at.node.span(),
                    "one include too many",
                    "a file counts each time it is included: look for files that include the same file more than once",
                );
            }
            return None;
        }
        let (name, key, file, new_dir) = if let Some(std_name) = target.strip_prefix("mtac:") {
            match STANDARD_POLICIES.iter().find(|(n, _)| *n == std_name) {
                Some((n, text)) => {
                    let name = format!("mtac:{n}");
                    (
                        name.clone(),
                        stack_key(&name),
                        self.reporter.add_file(&name, (*text).to_owned()),
                        dir.to_path_buf(),
                    )
                }
                None => {
                    let known: Vec<&str> = STANDARD_POLICIES.iter().map(|(n, _)| *n).collect();
                    let help = match did_you_mean(std_name, &known) {
                        Some(g) => format!("did you mean `mtac:{g}`?"),
                        None => format!("standard policies: {}", known.join(", ")),
                    };
                    self.reporter.err(
                        "mtac::include::unknown",
                        format!("no standard policy named `{std_name}`"),
                        at.file,
                        at.node.span(),
                        "unknown standard policy",
                        &help,
                    );
                    return None;
                }
            }
        } else {
            let path = dir.join(&target);
            let name = path.display().to_string();
            let new_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let read = self.trees.resolve(&path).and_then(|canonical| match self.include_cache.get(&canonical) {
                Some(&file) => Ok((canonical, file)),
                None => {
                    let text = files::read_regular(&canonical, files::POLICY_FILE_LIMIT)?;
                    let file = self.reporter.add_file(&name, text);
                    self.include_cache.insert(canonical.clone(), file);
                    Ok((canonical, file))
                }
            });
            match read {
                Ok((canonical, file)) => (name, canonical, file, new_dir),
                Err(refusal) => {
                    self.refuse(Named::Include, &path, refusal, at.file, at.node.span());
                    return None;
                }
            }
        };
        if self.include_stack.iter().any(|(k, _)| *k == key) {
            let chain: Vec<&str> = self.include_stack.iter().map(|(_, n)| n.as_str()).collect();
            self.reporter.err(
                "mtac::include::cycle",
                format!("`{name}` is already being included ({} → {name})", chain.join(" → ")),
                at.file,
                at.node.span(),
                "include cycle",
                "remove one of the includes",
            );
            return None;
        }
        let doc = self.parse(file)?;
        self.include_stack.push((key, name));
        Some((doc, file, new_dir))
    }

    /// Report a named file that was not read. The message names the path, never the content.
    pub(super) fn refuse(&mut self, named: Named, path: &Path, refusal: Refusal, file: usize, span: SourceSpan) {
        let shown = path.display();
        let (code, message, label, help) = match (named, refusal) {
            (Named::Include, Refusal::Io(e)) => (
                "mtac::include::missing",
                format!("cannot read included file {shown}: {e}"),
                "included here",
                "paths are relative to the file that includes them".to_owned(),
            ),
            (Named::List, Refusal::Io(e)) => (
                "mtac::list::missing",
                format!("cannot read list {shown}: {e}"),
                "named here",
                "list paths are relative to the policy file that names them".to_owned(),
            ),
            (Named::Key, Refusal::Io(e)) => (
                "mtac::dkim::key-missing",
                format!("cannot read DKIM key {shown}: {e}"),
                "named here",
                "key paths are relative to the policy file that names them; the node reads the same path".to_owned(),
            ),
            (named, Refusal::Outside(canonical)) => (
                named.code("mtac::include::outside-tree", "mtac::list::outside-tree", "mtac::dkim::outside-tree"),
                format!(
                    "{} {shown} is {}outside the policy's directory{}",
                    named.noun(),
                    if canonical == path {
                        String::new()
                    } else {
                        format!("{} (links resolved), ", canonical.display())
                    },
                    self.trees.policy_dir().map_or_else(String::new, |d| format!(" {}", d.display()))
                ),
                "outside the policy's tree",
                "mtac reads includes, lists and keys only under the policy's directory; \
                 to let it read another directory, give `--allow-dir DIR`"
                    .to_owned(),
            ),
            (named, Refusal::NotRegular) => (
                named.code("mtac::include::not-regular", "mtac::list::not-regular", "mtac::dkim::not-regular"),
                format!("{} {shown} is not a regular file", named.noun()),
                "not a regular file",
                "devices, FIFOs and directories are never read: name a file".to_owned(),
            ),
            (named, Refusal::TooLarge(limit)) => (
                named.code("mtac::include::too-large", "mtac::list::too-large", "mtac::dkim::too-large"),
                format!("{} {shown} is larger than {}", named.noun(), files::mib(limit)),
                "too large",
                match named {
                    Named::Include => "long lists belong in list files (`file=`), which may be larger".to_owned(),
                    Named::List => "split the list: list nodes add up, so each part can be its own node".to_owned(),
                    Named::Key => "a PEM private key is a few KiB: is this the right file?".to_owned(),
                },
            ),
        };
        self.reporter.err(code, message, file, span, label, &help);
    }
}

/// What kind of file a policy named, for the diagnostics of a refused one.
#[derive(Clone, Copy)]
pub(super) enum Named {
    Include,
    List,
    /// A `dkim-sign` key file.
    Key,
}

impl Named {
    fn code(self, include: &'static str, list: &'static str, key: &'static str) -> &'static str {
        match self {
            Named::Include => include,
            Named::List => list,
            Named::Key => key,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Named::Include => "included file",
            Named::List => "list",
            Named::Key => "DKIM key",
        }
    }
}

/// The identity of an included file for cycle detection: its canonical path when it exists, so
/// `../sub/frag.kdl` and `frag.kdl` are the same file.
pub(super) fn stack_key(name: &str) -> PathBuf {
    std::fs::canonicalize(name).unwrap_or_else(|_| PathBuf::from(name))
}
