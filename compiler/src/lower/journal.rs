//! `journal`: the decision journal (docs/policy.md section 2, "Top level"). Off unless written.

use super::ir::Draft;
use super::read::relative_to;
use super::{At, Lowerer};
use mtac_ruleset::model::{AddressPrivacy, IpPrivacy, JournalSettings};
use std::path::Path;

/// `max-size` when not written.
pub const DEFAULT_MAX_SIZE: u64 = 256 * 1024 * 1024;
/// `files` when not written.
pub const DEFAULT_FILES: u32 = 8;
/// The least room per file (`max-size / files`): below it a file would hold a handful of
/// records and rotate all the time.
const MIN_PER_FILE: u64 = 16 * 1024;
/// The most files: rotation renames each one, so their number stays small.
const MAX_FILES: u32 = 100;

impl Lowerer {
    /// `journal "PATH" [max-size=SIZE] [files=N] [addresses="full"|"pseudonymous"|"domain"]
    /// [client-ip="full"|"network"]`.
    pub(crate) fn journal(&mut self, at: At<'_>, dir: &Path, draft: &mut Draft) {
        let file = at.file;
        self.shape(at, &["max-size", "files", "addresses", "client-ip"], 1, false);
        let Some(path) = self.one_string(at, "the journal's file") else { return };
        let mut settings = JournalSettings {
            path: relative_to(dir, path),
            max_size: DEFAULT_MAX_SIZE,
            files: DEFAULT_FILES,
            addresses: AddressPrivacy::Full,
            client_ip: IpPrivacy::Full,
        };
        if let Some(entry) = Self::prop(at, "max-size") {
            settings.max_size = self.size(entry, file, "`max-size`").unwrap_or(settings.max_size);
        }
        if let Some(entry) = Self::prop(at, "files") {
            match self.u32_value(entry, file, "`files`", 1) {
                Some(n) if n <= MAX_FILES => settings.files = n,
                Some(n) => self.reporter.err(
                    "mtac::journal::files",
                    format!("{n} journal files"),
                    file,
                    entry.span(),
                    "too many",
                    "at most 100: each rotation renames every file",
                ),
                None => {}
            }
        }
        let per_file = settings.max_size / u64::from(settings.files);
        if per_file < MIN_PER_FILE {
            self.reporter.err(
                "mtac::journal::max-size",
                format!("{} bytes over {} files leaves {per_file} bytes a file", settings.max_size, settings.files),
                file,
                at.node.span(),
                "too small",
                "give at least 16 KiB a file (a record is a few hundred bytes), e.g. max-size=\"256MiB\" files=8",
            );
        }
        let addresses =
            "\"full\", \"pseudonymous\" (local parts replaced by a keyed hash) or \"domain\" (local parts dropped)";
        if let Some(mode) = self.mode(at, "addresses", AddressPrivacy::parse, addresses) {
            settings.addresses = mode;
        }
        if let Some(mode) = self.mode(at, "client-ip", IpPrivacy::parse, "\"full\" or \"network\" (IPv4 /24, IPv6 /48)")
        {
            settings.client_ip = mode;
        }
        draft.journal = Some(settings);
    }

    /// A privacy mode (`addresses=`, `client-ip=`): one of the words `parse` knows.
    fn mode<T>(&mut self, at: At<'_>, key: &str, parse: fn(&str) -> Option<T>, modes: &str) -> Option<T> {
        let entry = Self::prop(at, key)?;
        let text = self.string(entry, at.file, &format!("`{key}`"))?;
        let mode = parse(&text);
        if mode.is_none() {
            self.reporter.err(
                "mtac::journal::mode",
                format!("`{text}` is not a mode of `{key}`"),
                at.file,
                entry.span(),
                "unknown mode",
                modes,
            );
        }
        mode
    }
}
