//! Sender authentication: docs/policy.md section 2, `spf`, `dkim` and `dmarc`.
//!
//! Each node written bare verifies and records (the verdicts go into Authentication-Results);
//! refusing is the operator's word (`fail="refuse"`), except DMARC's `p=reject`, which a bare
//! `dmarc` honours: writing `dmarc` is asking for the domain owners' policies to be applied, as
//! Stalwart and rspamd's `dmarc` module with actions do.

use super::ir::{DomainEntry, DraftFarm, Sources};
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use mtac_ruleset::model::{OnFail, OnQuarantine, OnTempError, SpfSettings};
use std::path::Path;

/// A farm's `dmarc` before its domain lists become tables.
#[derive(Debug, Clone)]
pub struct DraftDmarc {
    pub reject: OnFail,
    pub quarantine: OnQuarantine,
    pub temperror: OnTempError,
    pub never_refuse: Vec<DomainEntry>,
    pub trust_arc: Vec<DomainEntry>,
    pub sources: Sources,
}

impl Lowerer {
    /// One of `choices` (name → value) from the string property `key`; `default` when absent.
    fn choice<T: Copy>(&mut self, at: At<'_>, key: &str, choices: &[(&str, T)], default: T) -> T {
        let Some(entry) = Self::prop(at, key) else { return default };
        let Some(text) = self.string(entry, at.file, &format!("`{key}`")) else { return default };
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return *value;
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        self.reporter.err(
            "mtac::sender-auth::value",
            format!("`{key}` cannot be `{text}`"),
            at.file,
            entry.span(),
            "unknown value",
            &format!("write one of {}", names.join(", ")),
        );
        default
    }

    fn temperror(&mut self, at: At<'_>, default: OnTempError) -> OnTempError {
        self.choice(at, "temperror", &[("defer", OnTempError::Defer), ("pass", OnTempError::Pass)], default)
    }

    /// `spf fail="record"|"refuse" temperror="pass"|"defer" helo=#true`.
    pub(crate) fn spf(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["fail", "temperror", "helo"], 0, false);
        let fail = self.choice(at, "fail", &[("record", OnFail::Record), ("refuse", OnFail::Refuse)], OnFail::Record);
        let temperror = self.temperror(at, OnTempError::Pass);
        let helo = self.bool_prop(at, "helo", true);
        farm.spf = Some(SpfSettings { fail, temperror, helo });
    }

    /// `dkim` or `dkim #false`: verify every DKIM signature and the ARC chain after DATA.
    pub(crate) fn dkim(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 1, false);
        let on = match Self::args(at).next() {
            Some(entry) => self.boolean(entry, at.file, "`dkim`").unwrap_or(true),
            None => true,
        };
        farm.dkim = Some(on);
    }

    /// `dmarc reject="refuse"|"record" quarantine="header"|"refuse"|"defer" temperror="pass"|"defer"
    /// { never-refuse DOMAIN…; trust-arc DOMAIN…; }`.
    pub(crate) fn dmarc(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["reject", "quarantine", "temperror"], 0, true);
        let reject =
            self.choice(at, "reject", &[("refuse", OnFail::Refuse), ("record", OnFail::Record)], OnFail::Refuse);
        let quarantine = self.choice(
            at,
            "quarantine",
            &[("header", OnQuarantine::Header), ("refuse", OnQuarantine::Refuse), ("defer", OnQuarantine::Defer)],
            OnQuarantine::Header,
        );
        let temperror = self.temperror(at, OnTempError::Pass);
        let mut dmarc = DraftDmarc {
            reject,
            quarantine,
            temperror,
            never_refuse: Vec::new(),
            trust_arc: Vec::new(),
            sources: Sources::default(),
        };
        for child in Self::children(at) {
            match child.node.name().value() {
                "never-refuse" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    self.domains(child, dir, true, &mut dmarc.never_refuse, &mut dmarc.sources);
                }
                "trust-arc" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    self.domains(child, dir, true, &mut dmarc.trust_arc, &mut dmarc.sources);
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("dmarc")), "`dmarc`"),
            }
        }
        farm.dmarc = Some(dmarc);
    }
}
