//! `mtac diff OLD NEW`: what a policy change would change. With `--journal`, every decision a
//! node recorded is replayed through both rulesets with the evaluator the node uses, and the
//! differences are counted by farm, stage, rule and direction, with examples (the blast
//! radius); `--fail-if-refused` turns "too much accepted mail would now be refused" into exit 1
//! for CI. Without journals, the rulesets themselves are compared (`structural.rs`).
//!
//! The replay also compares OLD's decision with the one the node recorded: a difference means
//! the journal was written under another ruleset than OLD (or by another mtac), and is reported,
//! not hidden. Records whose addresses were pseudonymised or whose client IP was truncated
//! (`journal addresses=`, `client-ip=`) are counted apart: their replay cannot be trusted to
//! reproduce what the node decided.

mod report;
mod structural;

use crate::cli::{load_ruleset, FileArgs, Format};
use clap::Args;
use mtac_ruleset::journal::{JournalReader, Record};
use mtac_ruleset::model::Stage;
use mtac_ruleset::replay::{Change, Outcome};
use mtac_ruleset::Ruleset;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The ruleset in use: a ruleset file, or a policy (.kdl) compiled here
    old: PathBuf,
    /// The candidate: a ruleset file, or a policy (.kdl)
    new: PathBuf,
    /// A decision journal to replay (repeatable; a node's rotated files `journal.1`… too)
    #[arg(long = "journal", value_name = "FILE")]
    journals: Vec<PathBuf>,
    /// Only this farm's decisions (and, without journals, only this farm's differences)
    #[arg(long)]
    farm: Option<String>,
    /// Exit 1 when more decisions that OLD accepts would NEW refuse than this: a count (`10`)
    /// or a share of the decisions OLD accepts (`0.5%`)
    #[arg(long, value_name = "N|PCT%", value_parser = Threshold::parse)]
    fail_if_refused: Option<Threshold>,
    /// Examples shown per group of changes
    #[arg(long, default_value_t = 3, value_name = "N")]
    examples: usize,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    #[command(flatten)]
    files: FileArgs,
}

/// `--fail-if-refused`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Count(u64),
    Percent(f64),
}

impl Threshold {
    fn parse(text: &str) -> Result<Threshold, String> {
        let bad = || format!("`{text}`: give a count (10) or a percentage (0.5%)");
        match text.strip_suffix('%') {
            Some(pct) => match pct.trim().parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Ok(Threshold::Percent(p)),
                _ => Err(bad()),
            },
            None => text.trim().parse().map(Threshold::Count).map_err(|_| bad()),
        }
    }

    /// Whether `refused` of `accepted` passes the threshold.
    fn exceeded(self, refused: u64, accepted: u64) -> bool {
        match self {
            Threshold::Count(n) => refused > n,
            Threshold::Percent(p) => (refused as f64) > p / 100.0 * accepted as f64,
        }
    }
}

/// One decision that changed, for the examples.
#[derive(Debug, Clone)]
pub struct Example {
    pub client: String,
    pub helo: String,
    pub sender: String,
    pub recipient: String,
    pub old: Outcome,
    pub new: Outcome,
}

impl Example {
    fn of(record: &Record, old: &Outcome, new: &Outcome) -> Example {
        let facts = &record.facts;
        Example {
            client: facts.client_ip.to_string(),
            helo: facts.helo.clone().unwrap_or_default(),
            sender: facts.sender.clone().map(|s| if s.is_empty() { "<>".to_owned() } else { s }).unwrap_or_default(),
            recipient: facts.recipient.clone().unwrap_or_default(),
            old: old.clone(),
            new: new.clone(),
        }
    }
}

/// A group of changed decisions: same farm, stage, direction and deciding rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupKey {
    pub farm: String,
    pub stage: Stage,
    pub change: Change,
    /// NEW's refusing rule (OLD's for a newly accepted decision).
    pub rule: String,
}

#[derive(Debug, Default)]
pub struct Group {
    pub count: u64,
    pub examples: Vec<Example>,
}

/// What the replay found.
#[derive(Debug, Default)]
pub struct Replay {
    pub files: usize,
    pub hosts: Vec<String>,
    pub decisions: u64,
    /// Decisions OLD did not refuse (the base of `--fail-if-refused`'s percentage).
    pub accepted_by_old: u64,
    pub by_change: BTreeMap<Change, u64>,
    pub groups: BTreeMap<GroupKey, Group>,
    /// Records whose addresses or client IP privacy replaced: replayed, counted apart.
    pub redacted: u64,
    pub redacted_changed: u64,
    /// OLD's replay differs from what the node recorded.
    pub live_mismatch: u64,
    pub live_examples: Vec<(String, Stage, Example)>,
    /// Records of a farm that OLD or NEW lacks.
    pub missing_farm: u64,
}

impl Replay {
    fn add(&mut self, record: &Record, old: &Outcome, new: &Outcome, examples: usize) {
        if record.facts.redacted != 0 {
            self.redacted += 1;
            if old != new {
                self.redacted_changed += 1;
            }
            return;
        }
        self.decisions += 1;
        if !old.is_refused() {
            self.accepted_by_old += 1;
        }
        if *old != record.outcome {
            self.live_mismatch += 1;
            if self.live_examples.len() < examples {
                let example = Example::of(record, &record.outcome, old);
                self.live_examples.push((record.farm.clone(), record.stage, example));
            }
        }
        let change = Change::between(old, new);
        *self.by_change.entry(change).or_default() += 1;
        if change == Change::Same {
            return;
        }
        let rule = match change {
            Change::NewlyAccepted => old.rule(),
            _ => new.rule().or(old.rule()),
        };
        let key =
            GroupKey { farm: record.farm.clone(), stage: record.stage, change, rule: rule.unwrap_or("").to_owned() };
        let group = self.groups.entry(key).or_default();
        group.count += 1;
        if group.examples.len() < examples {
            group.examples.push(Example::of(record, old, new));
        }
    }

    pub fn count(&self, change: Change) -> u64 {
        self.by_change.get(&change).copied().unwrap_or(0)
    }

    pub fn changed(&self) -> u64 {
        self.decisions - self.count(Change::Same)
    }
}

/// Replay every record of `journals` through `old` and `new`.
pub fn replay(
    old: &Ruleset,
    new: &Ruleset,
    journals: &[PathBuf],
    farm: Option<&str>,
    examples: usize,
) -> Result<Replay, String> {
    let mut replay = Replay { files: journals.len(), ..Replay::default() };
    for path in journals {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let reader = JournalReader::new(std::io::BufReader::with_capacity(256 * 1024, file))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let host = reader.header().hostname.clone();
        if !replay.hosts.contains(&host) {
            replay.hosts.push(host);
        }
        for record in reader {
            let record = record.map_err(|e| format!("{}: {e}", path.display()))?;
            if farm.is_some_and(|f| f != record.farm) {
                continue;
            }
            match (record.replay(old), record.replay(new)) {
                (Some(o), Some(n)) => replay.add(&record, &o, &n, examples),
                _ => replay.missing_farm += 1,
            }
        }
    }
    Ok(replay)
}

/// A ruleset file, or a policy compiled here.
fn load(path: &Path, files: &FileArgs) -> Result<Ruleset, String> {
    if path.extension().is_some_and(|e| e == "kdl") {
        load_ruleset(None, Some(path), files)
    } else {
        load_ruleset(Some(path), None, files)
    }
}

pub fn diff(args: &DiffArgs) -> Result<ExitCode, String> {
    let old = load(&args.old, &args.files)?;
    let new = load(&args.new, &args.files)?;
    if let Some(farm) = &args.farm {
        let known = |r: &Ruleset| r.policy().farms.iter().any(|f| &f.name == farm);
        if !known(&old) && !known(&new) {
            return Err(mtac_compiler::settings::unknown_farm(old.policy(), farm));
        }
    }
    if args.journals.is_empty() {
        if args.fail_if_refused.is_some() {
            return Err("--fail-if-refused needs --journal: only replayed decisions can be counted".to_owned());
        }
        let changes = structural::compare(&old, &new, args.farm.as_deref())?;
        structural::print(&changes, args.format == Format::Json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let replay = replay(&old, &new, &args.journals, args.farm.as_deref(), args.examples)?;
    let over =
        args.fail_if_refused.is_some_and(|t| t.exceeded(replay.count(Change::NewlyRefused), replay.accepted_by_old));
    let names = report::Names { old: &args.old, new: &args.new, old_hash: old.hash_hex(), new_hash: new.hash_hex() };
    if args.format == Format::Json {
        report::json(&replay, &names, args.fail_if_refused, over)?;
    } else {
        report::human(&replay, &names, args.fail_if_refused, over);
    }
    Ok(if over { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_compare() {
        assert_eq!(Threshold::parse("10"), Ok(Threshold::Count(10)));
        assert_eq!(Threshold::parse("0.5%"), Ok(Threshold::Percent(0.5)));
        assert!(Threshold::parse("lots").is_err());
        assert!(Threshold::parse("120%").is_err());
        assert!(!Threshold::Count(2).exceeded(2, 100));
        assert!(Threshold::Count(2).exceeded(3, 100));
        assert!(!Threshold::Percent(1.0).exceeded(1, 100));
        assert!(Threshold::Percent(1.0).exceeded(2, 100));
        assert!(!Threshold::Percent(0.0).exceeded(0, 0));
    }
}
