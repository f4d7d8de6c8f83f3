//! `mtac diff OLD NEW` without journals: the rulesets compared as data. Per farm and stage, the
//! steps added, removed or reordered and the replies changed (the decision program, in the
//! order the evaluator runs it); per table (matched by name, e.g. `mx.access`), the entries
//! added and removed — every key of both tables enumerated (prefix tables compare their entry
//! counts: their intervals do not give the networks back as written); and a line diff of the
//! settings as `mtac inspect --settings` prints them.

use mtac_ruleset::model::{Farm, Reply, Stage};
use mtac_ruleset::{Ruleset, Table};
use serde_json::json;
use std::collections::BTreeSet;

const STAGES: [Stage; 5] = [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data];
/// Table entries listed per table and direction; the rest are counted.
const LISTED: usize = 20;

/// One structural difference.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    FarmAdded(String),
    FarmRemoved(String),
    StepAdded {
        farm: String,
        stage: Stage,
        rule: String,
        reply: Reply,
    },
    StepRemoved {
        farm: String,
        stage: Stage,
        rule: String,
    },
    Reordered {
        farm: String,
        stage: Stage,
        old: Vec<String>,
        new: Vec<String>,
    },
    ReplyChanged {
        farm: String,
        stage: Stage,
        rule: String,
        old: Reply,
        new: Reply,
    },
    ShadowChanged {
        farm: String,
        stage: Stage,
        rule: String,
        shadow: bool,
    },
    TableAdded {
        table: String,
        entries: u64,
    },
    TableRemoved {
        table: String,
        entries: u64,
    },
    Entries {
        table: String,
        added: Vec<String>,
        removed: Vec<String>,
        added_count: usize,
        removed_count: usize,
    },
    EntryCount {
        table: String,
        old: u64,
        new: u64,
    },
    /// Lines of `mtac inspect --settings`, `-` OLD's, `+` NEW's.
    Settings(Vec<String>),
}

pub fn compare(old: &Ruleset, new: &Ruleset, farm: Option<&str>) -> Result<Vec<Change>, String> {
    let mut changes = Vec::new();
    let (o, n) = (old.policy(), new.policy());
    let wanted = |f: &&Farm| farm.is_none_or(|name| f.name == name);
    for f in o.farms.iter().filter(wanted) {
        match n.farms.iter().find(|g| g.name == f.name) {
            Some(g) => programs(f, g, &mut changes),
            None => changes.push(Change::FarmRemoved(f.name.clone())),
        }
    }
    for g in n.farms.iter().filter(wanted).filter(|g| !o.farms.iter().any(|f| f.name == g.name)) {
        changes.push(Change::FarmAdded(g.name.clone()));
    }
    tables(old, new, farm, &mut changes);
    let request = mtac_compiler::settings::Request { farm };
    let settings = |p| mtac_compiler::settings::print(p, &request);
    let (a, b) = (settings(o)?, settings(n)?);
    let lines = line_diff(&a.lines().collect::<Vec<_>>(), &b.lines().collect::<Vec<_>>());
    if !lines.is_empty() {
        changes.push(Change::Settings(lines));
    }
    Ok(changes)
}

fn programs(old: &Farm, new: &Farm, out: &mut Vec<Change>) {
    let farm = || old.name.clone();
    for stage in STAGES {
        let (a, b) = (old.program.stage(stage), new.program.stage(stage));
        for step in a.iter().filter(|s| !b.iter().any(|t| t.rule == s.rule)) {
            out.push(Change::StepRemoved { farm: farm(), stage, rule: step.rule.clone() });
        }
        for step in b.iter().filter(|t| !a.iter().any(|s| s.rule == t.rule)) {
            out.push(Change::StepAdded { farm: farm(), stage, rule: step.rule.clone(), reply: step.reply.clone() });
        }
        for s in a {
            let Some(t) = b.iter().find(|t| t.rule == s.rule) else { continue };
            if s.reply != t.reply {
                let (old, new) = (s.reply.clone(), t.reply.clone());
                out.push(Change::ReplyChanged { farm: farm(), stage, rule: s.rule.clone(), old, new });
            }
            if s.shadow != t.shadow {
                out.push(Change::ShadowChanged { farm: farm(), stage, rule: s.rule.clone(), shadow: t.shadow });
            }
        }
        let kept = |steps: &[mtac_ruleset::model::Step], other: &[mtac_ruleset::model::Step]| -> Vec<String> {
            steps.iter().filter(|s| other.iter().any(|t| t.rule == s.rule)).map(|s| s.rule.clone()).collect()
        };
        let (ka, kb) = (kept(a, b), kept(b, a));
        if ka != kb {
            out.push(Change::Reordered { farm: farm(), stage, old: ka, new: kb });
        }
    }
}

/// A table's entries as text, or `None` for a prefix table (counted only).
fn entries(table: &Table) -> Option<BTreeSet<String>> {
    match table {
        Table::Domains(t) => Some(t.entries().into_iter().map(|(k, _)| k).collect()),
        Table::Addresses(t) => Some(t.entries().into_iter().map(|(k, _)| k).collect()),
        Table::Prefixes(_) => None,
    }
}

fn tables<'r>(old: &'r Ruleset, new: &'r Ruleset, farm: Option<&str>, out: &mut Vec<Change>) {
    let of_farm = |name: &str| farm.is_none_or(|f| name.split_once('.').is_some_and(|(owner, _)| owner == f));
    let named = |r: &'r Ruleset| -> Vec<(String, u64, &'r Table)> {
        r.policy()
            .tables
            .iter()
            .zip(r.tables())
            .filter(|(info, _)| of_farm(&info.name))
            .map(|(info, table)| (info.name.clone(), info.entries, table))
            .collect()
    };
    let (a, b) = (named(old), named(new));
    for (name, count, table) in &a {
        let Some((_, new_count, other)) = b.iter().find(|(n, _, _)| n == name) else {
            out.push(Change::TableRemoved { table: name.clone(), entries: *count });
            continue;
        };
        match (entries(table), entries(other)) {
            (Some(x), Some(y)) => {
                let added: Vec<String> = y.difference(&x).cloned().collect();
                let removed: Vec<String> = x.difference(&y).cloned().collect();
                if !added.is_empty() || !removed.is_empty() {
                    out.push(Change::Entries {
                        table: name.clone(),
                        added_count: added.len(),
                        removed_count: removed.len(),
                        added: added.into_iter().take(LISTED).collect(),
                        removed: removed.into_iter().take(LISTED).collect(),
                    });
                }
            }
            _ if count != new_count => {
                out.push(Change::EntryCount { table: name.clone(), old: *count, new: *new_count })
            }
            _ => {}
        }
    }
    for (name, count, _) in b.iter().filter(|(n, _, _)| !a.iter().any(|(m, _, _)| m == n)) {
        out.push(Change::TableAdded { table: name.clone(), entries: *count });
    }
}

/// The lines only in `a` (`- `) and only in `b` (`+ `), in order: a longest common subsequence.
fn line_diff(a: &[&str], b: &[&str]) -> Vec<String> {
    // Settings prints are a few hundred lines: the quadratic table is small.
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            let v = if a.get(i) == b.get(j) {
                lcs.get(i + 1).and_then(|r| r.get(j + 1)).map_or(0, |v| v + 1)
            } else {
                let down = lcs.get(i + 1).and_then(|r| r.get(j)).copied().unwrap_or(0);
                let right = lcs.get(i).and_then(|r| r.get(j + 1)).copied().unwrap_or(0);
                down.max(right)
            };
            if let Some(cell) = lcs.get_mut(i).and_then(|r| r.get_mut(j)) {
                *cell = v;
            }
        }
    }
    let at = |i: usize, j: usize| lcs.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0);
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => (i, j) = (i + 1, j + 1),
            (Some(x), _) if j == m || at(i + 1, j) >= at(i, j + 1) => {
                out.push(format!("- {x}"));
                i += 1;
            }
            (_, Some(y)) => {
                out.push(format!("+ {y}"));
                j += 1;
            }
            _ => break,
        }
    }
    out
}

fn change_json(change: &Change) -> serde_json::Value {
    match change {
        Change::FarmAdded(farm) => json!({"kind": "farm-added", "farm": farm}),
        Change::FarmRemoved(farm) => json!({"kind": "farm-removed", "farm": farm}),
        Change::StepAdded { farm, stage, rule, reply } => {
            json!({"kind": "step-added", "farm": farm, "stage": stage.as_str(), "rule": rule, "reply": reply.to_string()})
        }
        Change::StepRemoved { farm, stage, rule } => {
            json!({"kind": "step-removed", "farm": farm, "stage": stage.as_str(), "rule": rule})
        }
        Change::Reordered { farm, stage, old, new } => {
            json!({"kind": "reordered", "farm": farm, "stage": stage.as_str(), "old": old, "new": new})
        }
        Change::ReplyChanged { farm, stage, rule, old, new } => json!({"kind": "reply-changed", "farm": farm,
            "stage": stage.as_str(), "rule": rule, "old": old.to_string(), "new": new.to_string()}),
        Change::ShadowChanged { farm, stage, rule, shadow } => {
            json!({"kind": "shadow-changed", "farm": farm, "stage": stage.as_str(), "rule": rule, "shadow": shadow})
        }
        Change::TableAdded { table, entries } => json!({"kind": "table-added", "table": table, "entries": entries}),
        Change::TableRemoved { table, entries } => json!({"kind": "table-removed", "table": table, "entries": entries}),
        Change::Entries { table, added, removed, added_count, removed_count } => json!({"kind": "entries",
            "table": table, "added": added, "removed": removed, "added_count": added_count, "removed_count": removed_count}),
        Change::EntryCount { table, old, new } => {
            json!({"kind": "entry-count", "table": table, "old": old, "new": new})
        }
        Change::Settings(lines) => json!({"kind": "settings", "lines": lines}),
    }
}

fn change_text(change: &Change) -> String {
    match change {
        Change::FarmAdded(farm) => format!("farm {farm}: added"),
        Change::FarmRemoved(farm) => format!("farm {farm}: removed"),
        Change::StepAdded { farm, stage, rule, reply } => {
            format!("{farm} {}: step added: {rule} ({reply})", stage.as_str())
        }
        Change::StepRemoved { farm, stage, rule } => format!("{farm} {}: step removed: {rule}", stage.as_str()),
        Change::Reordered { farm, stage, old, new } => {
            format!("{farm} {}: steps reordered: {} → {}", stage.as_str(), old.join(", "), new.join(", "))
        }
        Change::ReplyChanged { farm, stage, rule, old, new } => {
            format!("{farm} {}: {rule}: reply {old} → {new}", stage.as_str())
        }
        Change::ShadowChanged { farm, stage, rule, shadow: true } => {
            format!("{farm} {}: {rule}: now shadow", stage.as_str())
        }
        Change::ShadowChanged { farm, stage, rule, shadow: false } => {
            format!("{farm} {}: {rule}: now enforced (was shadow)", stage.as_str())
        }
        Change::TableAdded { table, entries } => format!("table {table}: added ({entries} entries)"),
        Change::TableRemoved { table, entries } => format!("table {table}: removed ({entries} entries)"),
        Change::Entries { table, added, removed, added_count, removed_count } => {
            let mut text = format!("table {table}: {added_count} added, {removed_count} removed");
            for entry in added {
                text.push_str(&format!("\n  + {entry}"));
            }
            for entry in removed {
                text.push_str(&format!("\n  - {entry}"));
            }
            let unlisted = added_count + removed_count - added.len() - removed.len();
            if unlisted > 0 {
                text.push_str(&format!("\n  … and {unlisted} more"));
            }
            text
        }
        Change::EntryCount { table, old, new } => format!("table {table}: {old} → {new} entries"),
        Change::Settings(lines) => format!("settings (mtac inspect --settings):\n  {}", lines.join("\n  ")),
    }
}

pub fn print(changes: &[Change], json: bool) -> Result<(), String> {
    if json {
        let list: Vec<serde_json::Value> = changes.iter().map(change_json).collect();
        let text = serde_json::to_string_pretty(&json!({"changes": list})).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    if changes.is_empty() {
        println!("no structural differences");
    }
    for change in changes {
        println!("{}", change_text(change));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_diff_keeps_order_and_common_lines() {
        let a = ["a", "b", "c", "d"];
        let b = ["a", "c", "x", "d"];
        assert_eq!(super::line_diff(&a, &b), vec!["- b", "+ x"]);
        assert!(super::line_diff(&a, &a).is_empty());
    }
}
