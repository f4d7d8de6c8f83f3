//! `shadow`: docs/policy.md section 2, `shadow` — policy rules evaluated, logged and counted as
//! "would refuse" with the reply they would give, never enforced (Postfix's `warn_if_reject`,
//! postscreen's `ignore`). Which names a farm may shadow is checked by `validate` (against the
//! farm's own rules) once the whole farm is read.

use super::ir::{DraftFarm, Origin, Pos};
use super::{At, Lowerer};
use std::path::Path;

impl Lowerer {
    /// `shadow "RULE"…`: the named rules of this farm decide nothing, they only report.
    pub(crate) fn shadow(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], usize::MAX, false);
        for entry in Self::args(at) {
            if let Some(rule) = self.string(entry, at.file, "a rule name") {
                let origin = Origin { file: at.file, pos: Pos::Span(entry.span()) };
                farm.shadow.push((rule, origin));
            }
        }
    }
}
