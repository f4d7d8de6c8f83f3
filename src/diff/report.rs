//! The replay's blast radius, printed for a person or as JSON for CI.

use super::{Example, Replay, Threshold};
use mtac_ruleset::replay::Change;
use serde_json::json;
use std::path::Path;

/// What the two rulesets are called in the output.
pub struct Names<'a> {
    pub old: &'a Path,
    pub new: &'a Path,
    pub old_hash: String,
    pub new_hash: String,
}

const CHANGES: [Change; 4] =
    [Change::NewlyRefused, Change::NewlyAccepted, Change::ReplyChanged, Change::PendingChanged];

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn example_text(e: &Example) -> String {
    let mut who = format!("client {}", e.client);
    for (name, value) in [("helo", &e.helo), ("from", &e.sender), ("to", &e.recipient)] {
        if !value.is_empty() {
            who.push_str(&format!(" {name} {value}"));
        }
    }
    format!("{who}: {} → {}", e.old, e.new)
}

fn example_json(e: &Example) -> serde_json::Value {
    json!({"client": e.client, "helo": e.helo, "sender": e.sender, "recipient": e.recipient,
        "old": e.old.to_string(), "new": e.new.to_string()})
}

pub fn human(replay: &Replay, names: &Names<'_>, threshold: Option<Threshold>, over: bool) {
    println!(
        "replayed {} decisions from {} journal file(s) (written by {})",
        replay.decisions + replay.redacted,
        replay.files,
        replay.hosts.join(", ")
    );
    println!("  old {} ({})", names.old.display(), names.old_hash.get(..16).unwrap_or(&names.old_hash));
    println!("  new {} ({})", names.new.display(), names.new_hash.get(..16).unwrap_or(&names.new_hash));
    println!(
        "changed: {} of {} ({:.2}%)",
        replay.changed(),
        replay.decisions,
        percent(replay.changed(), replay.decisions)
    );
    let refused = replay.count(Change::NewlyRefused);
    println!(
        "  newly refused: {refused} ({:.2}% of the {} decisions OLD accepts)",
        percent(refused, replay.accepted_by_old),
        replay.accepted_by_old
    );
    for change in [Change::NewlyAccepted, Change::ReplyChanged, Change::PendingChanged] {
        println!("  {}: {}", change.as_str().replace('-', " "), replay.count(change));
    }
    if replay.redacted > 0 {
        println!(
            "redacted: {} decisions on pseudonymised addresses or truncated client IPs, counted apart ({} of them \
             changed): address-table lookups of their local parts cannot match, so their replay is not the node's",
            replay.redacted, replay.redacted_changed
        );
    }
    if replay.missing_farm > 0 {
        println!("skipped: {} decisions of a farm OLD or NEW does not have", replay.missing_farm);
    }
    if replay.live_mismatch > 0 {
        println!(
            "warning: OLD decides {} recorded decisions otherwise than the node did: the journal was written under \
             another ruleset (or another mtac)",
            replay.live_mismatch
        );
        for (farm, stage, e) in &replay.live_examples {
            println!("  {farm} {}: recorded {}", stage.as_str(), example_text(e).replacen(": ", ", replayed: ", 1));
        }
    }
    for change in CHANGES {
        for (key, group) in replay.groups.iter().filter(|(k, _)| k.change == change) {
            let rule = if key.rule.is_empty() { String::new() } else { format!(" {}", key.rule) };
            println!("\n{} {} {}{rule}: {}", key.farm, key.stage.as_str(), change.as_str(), group.count);
            for e in &group.examples {
                println!("  {}", example_text(e));
            }
        }
    }
    if let Some(t) = threshold {
        let limit = match t {
            Threshold::Count(n) => format!("{n} decisions"),
            Threshold::Percent(p) => format!("{p}% of the accepted decisions"),
        };
        let verdict = if over { "over" } else { "within" };
        println!("\nnewly refused: {refused}, {verdict} --fail-if-refused ({limit})");
    }
}

pub fn json(replay: &Replay, names: &Names<'_>, threshold: Option<Threshold>, over: bool) -> Result<(), String> {
    let groups: Vec<serde_json::Value> = replay
        .groups
        .iter()
        .map(|(key, group)| {
            json!({"farm": key.farm, "stage": key.stage.as_str(), "change": key.change.as_str(), "rule": key.rule,
                "count": group.count, "examples": group.examples.iter().map(example_json).collect::<Vec<_>>()})
        })
        .collect();
    let by_change: serde_json::Map<String, serde_json::Value> =
        Change::ALL.iter().map(|c| (c.as_str().to_owned(), json!(replay.count(*c)))).collect();
    let threshold = threshold.map(|t| match t {
        Threshold::Count(n) => json!({"count": n}),
        Threshold::Percent(p) => json!({"percent": p}),
    });
    let live: Vec<serde_json::Value> = replay
        .live_examples
        .iter()
        .map(|(farm, stage, e)| {
            json!({"farm": farm, "stage": stage.as_str(), "recorded": e.old.to_string(),
            "replayed": e.new.to_string(), "client": e.client, "sender": e.sender, "recipient": e.recipient})
        })
        .collect();
    let value = json!({
        "old": {"path": names.old.display().to_string(), "hash": names.old_hash},
        "new": {"path": names.new.display().to_string(), "hash": names.new_hash},
        "journal_files": replay.files,
        "hosts": replay.hosts,
        "decisions": replay.decisions,
        "accepted_by_old": replay.accepted_by_old,
        "changed": replay.changed(),
        "by_change": by_change,
        "groups": groups,
        "redacted": {"decisions": replay.redacted, "changed": replay.redacted_changed},
        "missing_farm": replay.missing_farm,
        "live_mismatch": {"decisions": replay.live_mismatch, "examples": live},
        "fail_if_refused": threshold,
        "over_threshold": over,
    });
    println!("{}", serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?);
    Ok(())
}
