//! `mtac lookup`: one table lookup, as Postfix's `postmap -q` answers it.
//!
//! The key decides which tables are asked: an IP address the prefix tables (longest prefix), an
//! address the address tables and, by its domain, the domain tables, a domain the domain tables.
//! Exit 0 when a table matched, 1 when none did (as postmap), 2 on usage errors.
//!
//! Each answer names the entry behind it and where it was written (`file:line`), read from the
//! `RULESET.sources` file `mtac build` writes beside the ruleset ([`mtac_compiler::sources`]).
//! Without that file the answer names the table's sources only, and says why on stderr.

use clap::Args;
use mtac_compiler::diag::did_you_mean;
use mtac_compiler::sources::{Asked, EntrySources, Looked};
use mtac_ruleset::model::{AccessAction, Farm, TableId, TableInfo, VERIFIED_SENDER};
use mtac_ruleset::{syntax, Ruleset, Table};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct LookupArgs {
    /// The ruleset file
    ruleset: PathBuf,
    /// Ask only this farm's tables
    #[arg(long)]
    farm: Option<String>,
    /// Ask only this table (its name as `mtac inspect` lists it, e.g. mx.access; with --farm,
    /// the part after the farm's name also does: access)
    #[arg(long, value_name = "NAME")]
    table: Option<String>,
    /// An IP address, an address (local@domain) or a domain
    key: String,
}

/// What the key is, and so which tables it can be looked up in.
enum Key {
    Ip(IpAddr),
    Address { address: String, domain: String },
    Domain(String),
}

fn parse_key(text: &str) -> Result<Key, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Key::Ip(ip));
    }
    if text.contains('@') {
        return match syntax::split_address(text) {
            Some((_, domain)) if syntax::is_mailbox(text) => {
                Ok(Key::Address { address: text.to_owned(), domain: syntax::normalize_domain(domain) })
            }
            _ => Err(format!("`{text}` is not an address (local@domain)")),
        };
    }
    let domain = text.strip_suffix('.').unwrap_or(text);
    if syntax::is_hostname(domain) {
        return Ok(Key::Domain(syntax::normalize_domain(domain)));
    }
    Err(format!("`{text}` is not an IP address, an address or a domain"))
}

pub fn lookup(args: &LookupArgs) -> Result<ExitCode, String> {
    let key = parse_key(&args.key)?;
    let ruleset = Ruleset::open(&args.ruleset).map_err(|e| format!("{}: {e}", args.ruleset.display()))?;
    let sources = EntrySources::load_for(&args.ruleset, &ruleset);
    let policy = ruleset.policy();
    let farm = match &args.farm {
        Some(name) => Some(ruleset.farm(name).ok_or_else(|| mtac_compiler::settings::unknown_farm(policy, name))?),
        None => None,
    };
    let prefix = farm.map(|f| format!("{}.", f.name));
    let in_farm = |info: &TableInfo| prefix.as_deref().is_none_or(|p| info.name.starts_with(p));
    let chosen: Vec<usize> = match &args.table {
        Some(name) => {
            let full = prefix.as_deref().map(|p| format!("{p}{name}"));
            let found = policy
                .tables
                .iter()
                .position(|t| in_farm(t) && (t.name == *name || full.as_deref() == Some(t.name.as_str())));
            match found {
                Some(index) => vec![index],
                None => {
                    let names: Vec<&str> =
                        policy.tables.iter().filter(|t| in_farm(t)).map(|t| t.name.as_str()).collect();
                    // With --farm, NAME may be the short name: compare it with the short names too.
                    let short = |n: &str| prefix.as_deref().and_then(|p| n.strip_prefix(p)).unwrap_or(n).to_owned();
                    let close = did_you_mean(name, &names).or_else(|| {
                        let shorts: Vec<String> = names.iter().map(|n| short(n)).collect();
                        let shorts: Vec<&str> = shorts.iter().map(String::as_str).collect();
                        did_you_mean(name, &shorts).map(|s| format!("{}{s}", prefix.as_deref().unwrap_or("")))
                    });
                    let hint = match close {
                        Some(close) => format!("did you mean `{close}`?"),
                        None if names.is_empty() => "the ruleset has no table here".to_owned(),
                        None => format!("tables: {}", names.join(", ")),
                    };
                    return Err(format!("no table `{name}` in the ruleset ({hint})"));
                }
            }
        }
        None => (0..policy.tables.len()).filter(|&i| policy.tables.get(i).is_some_and(in_farm)).collect(),
    };
    let mut matched = 0usize;
    for index in chosen {
        let (Some(info), Some(table)) = (policy.tables.get(index), ruleset.tables().get(index)) else { continue };
        let (value, asked) = match (&key, table) {
            (Key::Ip(ip), Table::Prefixes(t)) => (t.lookup(*ip), Asked::Ip(*ip)),
            (Key::Address { address, .. }, Table::Addresses(t)) => (t.lookup(address), Asked::Address(address.clone())),
            (Key::Address { domain, .. } | Key::Domain(domain), Table::Domains(t)) => {
                (t.lookup(domain), Asked::Domain(domain.clone()))
            }
            _ => continue,
        };
        let Some(value) = value else { continue };
        matched += 1;
        let id = TableId::try_from(index).unwrap_or(TableId::MAX);
        let found = Looked { table: id, asked, value: Some(value) };
        println!(
            "{}\t{}\t{}\t{}",
            info.name,
            found.asked,
            meaning(policy, info, &found.asked, value),
            entries(&sources, info, &found, value)
        );
    }
    if let (Err(why), true) = (&sources, matched > 0) {
        eprintln!("mtac: entries not named: {why}");
    }
    Ok(if matched > 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `explain`'s list of the table entries its evaluation matched: the table, what was looked
/// up, what the entry means, and the entry with the line that wrote it.
pub fn print_matched(ruleset: &Ruleset, sources: &Result<EntrySources, String>, looked: &[Looked]) {
    let policy = ruleset.policy();
    println!("matched:");
    let mut any = false;
    for found in looked {
        let (Some(value), Some(info)) =
            (found.value, usize::try_from(found.table).ok().and_then(|i| policy.tables.get(i)))
        else {
            continue;
        };
        any = true;
        println!("  {} {} → {}", info.name, found.asked, meaning(policy, info, &found.asked, value));
        println!("      entry {}", entries(sources, info, found, value));
    }
    if !any {
        println!("  no table entry matched this session");
    } else if let Err(why) = sources {
        println!("  (entries not named: {why})");
    }
}

/// The entries behind a table's answer, with the line that wrote each; without the sources
/// file, the table's sources.
fn entries(sources: &Result<EntrySources, String>, info: &TableInfo, found: &Looked, value: u32) -> String {
    /// An address table asked for a domain may have thousands of its addresses: name a few.
    const SHOWN: usize = 3;
    let Ok(sources) = sources else { return format!("(sources: {})", info.sources.join(", ")) };
    let matched = sources.matched(found.table, info.kind, &found.asked, value);
    if matched.is_empty() {
        return "(no entry in the sources file matches: it may not be this ruleset's)".to_owned();
    }
    let mut text = matched
        .iter()
        .take(SHOWN)
        .map(|e| format!("{} at {}", e.key, sources.source(e)))
        .collect::<Vec<_>>()
        .join(", ");
    if matched.len() > SHOWN {
        text.push_str(&format!(" and {} more", matched.len() - SHOWN));
    }
    text
}

/// What a table's value means: an access list's action, a verified whitelist entry, a
/// recipient-domain block, or a plain entry.
fn meaning(policy: &mtac_ruleset::model::Policy, info: &TableInfo, asked: &Asked, value: u32) -> String {
    if let Asked::AddressDomain(_) = asked {
        return "has addresses of this domain".to_owned();
    }
    let farm: Option<&Farm> = policy.farms.iter().find(|f| info.name.starts_with(&format!("{}.", f.name)));
    let Some(farm) = farm else { return "listed".to_owned() };
    let name = info.name.strip_prefix(&format!("{}.", farm.name)).unwrap_or(&info.name);
    match name {
        "access" => match usize::try_from(value).ok().and_then(|i| farm.access_actions.get(i)) {
            Some(AccessAction::Accept) => "accept".to_owned(),
            Some(AccessAction::Reject(reply)) => format!("reject {reply}"),
            Some(AccessAction::Defer(reply)) => format!("defer {reply}"),
            None => format!("action #{value}"),
        },
        "recipient-domains" => match usize::try_from(value).ok().and_then(|i| farm.recipient_domains.policies.get(i)) {
            Some(block) => format!("the block recipient-domain \"{}\"", block.domains.join("\" \"")),
            None => format!("block #{value}"),
        },
        "greylist-senders" if value == VERIFIED_SENDER => "listed (verified=#true: only with SPF pass)".to_owned(),
        _ => "listed".to_owned(),
    }
}
