//! postscreen's screens, done by the node: docs/policy.md section 2, `screen` (the pregreet
//! test's memory and verdict, unauthorised pipelining, stress-adaptive limits).

use super::ir::{DraftFarm, DraftScreen};
use super::{At, Lowerer};
use crate::nodes::{self, Place};
use mtac_ruleset::model::{Stress, TalkerAction};
use std::path::Path;

impl Lowerer {
    pub(crate) fn screen(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let known = nodes::names(Place::In("screen"));
        for child in Self::children(at) {
            let name = child.node.name().value();
            match name {
                "pregreet" => self.screen_pregreet(child, &mut farm.screen),
                "pipelining" => self.screen_pipelining(child, &mut farm.screen),
                "stress" => self.screen_stress(child, &mut farm.screen),
                _ => self.unknown_node(child, &known, "`screen`"),
            }
        }
    }

    /// `#false` written as the argument of a screen: it is off. `None`: no argument.
    fn screen_off(&mut self, at: At<'_>) -> Option<bool> {
        let entry = Self::args(at).next()?;
        self.boolean(entry, at.file, &format!("`{}`", at.node.name().value())).map(|on| !on)
    }

    fn screen_pregreet(&mut self, at: At<'_>, screen: &mut DraftScreen) {
        self.shape(at, &["remember", "talker"], 1, false);
        if let Some(off) = self.screen_off(at) {
            screen.pregreet_off = off;
        }
        if let Some(entry) = Self::prop(at, "remember") {
            if let Some(seconds) = self.duration(entry, at.file, "`remember`") {
                screen.pregreet_remember = seconds;
            }
        }
        if let Some(entry) = Self::prop(at, "talker") {
            match self.string(entry, at.file, "`talker`").as_deref() {
                Some("close") => screen.pregreet_talker = TalkerAction::Close,
                Some("refuse-recipients") => screen.pregreet_talker = TalkerAction::RefuseRecipients,
                Some(other) => self.reporter.err(
                    "mtac::screen::talker",
                    format!("unknown early-talker action `{other}`"),
                    at.file,
                    entry.span(),
                    "expected \"close\" or \"refuse-recipients\"",
                    "\"close\" answers 554 at once; \"refuse-recipients\" lets it talk and refuses every RCPT",
                ),
                None => {}
            }
        }
    }

    fn screen_pipelining(&mut self, at: At<'_>, screen: &mut DraftScreen) {
        self.shape(at, &["reply"], 1, false);
        if let Some(off) = self.screen_off(at) {
            screen.pipelining_off = off;
        }
        if let Some(entry) = Self::prop(at, "reply") {
            if let Some(reply) = self.reply(entry, at.file, Some('5')) {
                screen.pipelining_reply = Some(reply);
            }
        }
    }

    fn screen_stress(&mut self, at: At<'_>, screen: &mut DraftScreen) {
        self.shape(at, &["at", "command", "data", "errors"], 1, false);
        if self.screen_off(at) == Some(true) {
            screen.stress = None;
            return;
        }
        let mut stress = screen.stress.clone().unwrap_or_else(DraftScreen::default_stress);
        if let Some(entry) = Self::prop(at, "at") {
            match percent(entry.value()) {
                Some(p) => stress.percent = p,
                None => self.reporter.err(
                    "mtac::screen::stress",
                    "`at` must be a share of the connection limit between 1% and 100%".to_owned(),
                    at.file,
                    entry.span(),
                    "not a percentage",
                    "write e.g. \"80%\" (Postfix's stress mode starts when the process limit is reached)",
                ),
            }
        }
        for (key, slot) in [("command", &mut stress.command_timeout), ("data", &mut stress.data_timeout)] {
            if let Some(entry) = Self::prop(at, key) {
                match self.duration(entry, at.file, &format!("stress `{key}`")) {
                    Some(0) => self.reporter.err(
                        "mtac::limits::timeout",
                        format!("stress `{key}` of 0 would never let a session through"),
                        at.file,
                        entry.span(),
                        "zero timeout",
                        "Postfix's stress default is 10 seconds for commands",
                    ),
                    Some(v) => *slot = v,
                    None => {}
                }
            }
        }
        if let Some(entry) = Self::prop(at, "errors") {
            if let Some(v) = self.u32_value(entry, at.file, "stress `errors`", 1) {
                stress.errors = v;
            }
        }
        screen.stress = Some(stress);
    }
}

/// `"80%"` or `80`, within 1..=100.
fn percent(value: &kdl::KdlValue) -> Option<u8> {
    let n: i128 = match value {
        kdl::KdlValue::Integer(n) => *n,
        kdl::KdlValue::String(s) => s.strip_suffix('%')?.trim().parse().ok()?,
        _ => return None,
    };
    u8::try_from(n).ok().filter(|p| (1..=100).contains(p))
}

impl DraftScreen {
    /// Postfix's stress values (`smtpd_timeout` 10s, `smtpd_hard_error_limit` 1) from 80% on.
    pub fn default_stress() -> Stress {
        Stress { percent: 80, command_timeout: 10, data_timeout: 60, errors: 1 }
    }
}

impl Default for DraftScreen {
    fn default() -> Self {
        DraftScreen {
            pregreet_off: false,
            pregreet_remember: 24 * 3600,
            pregreet_talker: TalkerAction::Close,
            pipelining_off: false,
            pipelining_reply: None,
            stress: Some(DraftScreen::default_stress()),
        }
    }
}
