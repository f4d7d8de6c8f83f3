//! `recipient-domain`: docs/policy.md section 2, `recipient-domain` — checks overridden for the
//! recipients of some local domains (an ISP's customer that opts out of greylisting, another
//! with a stricter DNS list threshold). What a block may name is checked by `validate` once the
//! whole farm is read: only anti-spam rules this farm decides at RCPT.

use super::ir::{DraftFarm, DraftRecipientDomain, Origin, Pos, Sources};
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use std::path::Path;

impl Lowerer {
    /// `recipient-domain "DOMAIN"… [subdomains=BOOL] [file=PATH] { skip "RULE"…; dnsbl threshold=N }`.
    pub(crate) fn recipient_domain(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["file", "subdomains"], usize::MAX, true);
        let subdomains = self.bool_prop(at, "subdomains", false);
        let mut block = DraftRecipientDomain {
            domains: Vec::new(),
            sources: Sources::default(),
            skip: Vec::new(),
            dnsbl_threshold: None,
            origin: Origin { file: at.file, pos: Pos::Span(at.node.name().span()) },
        };
        self.domains(at, dir, subdomains, &mut block.domains, &mut block.sources);
        let known = nodes::names(Place::In("recipient-domain"));
        for child in Self::children(at) {
            match child.node.name().value() {
                "skip" => {
                    self.shape(child, &[], usize::MAX, false);
                    for entry in Self::args(child) {
                        if let Some(rule) = self.string(entry, child.file, "a rule name") {
                            block.skip.push((rule, Origin { file: child.file, pos: Pos::Span(entry.span()) }));
                        }
                    }
                }
                "dnsbl" => {
                    self.shape(child, &["threshold"], 0, false);
                    if let Some(entry) = Self::prop(child, "threshold") {
                        let threshold = self.integer(entry, child.file, "`threshold`", 1, 1000);
                        if let Some(t) = threshold.and_then(|v| i32::try_from(v).ok()) {
                            block.dnsbl_threshold =
                                Some((t, Origin { file: child.file, pos: Pos::Span(entry.span()) }));
                        }
                    }
                }
                _ => self.unknown_node(child, &known, "`recipient-domain`"),
            }
        }
        farm.recipient_domains.push(block);
    }
}
