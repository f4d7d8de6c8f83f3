//! Every node of the policy language, in one table: where it may be written, whether a farm may
//! hold it once only, where docs/policy.md describes it, and the function that lowers it.
//!
//! Lowering (`crate::lower`) dispatches on this table: a top-level or farm node goes to the
//! function of its entry, `include` reads its file into the place it stands, and a name the
//! table lacks gets "unknown node" with the closest name of the place as a suggestion. Children
//! (`Place::In`) are read by their parent's function; the table names them for the suggestions
//! and the docs. **Invariant:** a node is known exactly where its entry says; tests prove that
//! lowering reads every entry and that docs/policy.md section 2 has one entry per node.

use crate::lower::{At, Draft, DraftFarm, Lowerer};
use std::path::Path;

/// Where a node may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A top-level node of the policy (or of a file included at the top level).
    Top,
    /// A child of `farm` (or a node of a file included in a farm).
    Farm,
    /// A child of the farm node or child node of this name.
    In(&'static str),
}

/// Lowers a top-level node into the draft; `&Path` is the directory relative names are read from.
pub type TopLowering = fn(&mut Lowerer, At<'_>, &Path, &mut Draft);

/// Lowers a farm node into its farm; `&Path` is the directory relative names are read from.
pub type FarmLowering = fn(&mut Lowerer, At<'_>, &Path, &mut DraftFarm);

/// How lowering reads a node.
#[derive(Debug, Clone, Copy)]
pub enum Lowering {
    Top(TopLowering),
    Farm(FarmLowering),
    /// `include`: the named file's nodes are lowered where the include stands.
    Include,
    /// A child node: its parent's function reads it.
    ByParent,
}

/// One node of the policy language.
#[derive(Debug, Clone, Copy)]
pub struct Node {
    pub name: &'static str,
    pub place: Place,
    /// Farm nodes that describe one thing: given twice in one file, an error; in a file that
    /// includes another, the later one overrides. Nodes with the same key count as one
    /// (`relay` and `deliver`: a farm has one way out).
    pub once: Option<&'static str>,
    /// The heading of docs/policy.md section 2 that describes the node (its own, or its
    /// parent's for children).
    pub anchor: &'static str,
    pub lower: Lowering,
}

const fn top(name: &'static str, lower: TopLowering) -> Node {
    Node { name, place: Place::Top, once: None, anchor: name, lower: Lowering::Top(lower) }
}

const fn farm(name: &'static str, lower: FarmLowering) -> Node {
    Node { name, place: Place::Farm, once: None, anchor: name, lower: Lowering::Farm(lower) }
}

const fn once(name: &'static str, lower: FarmLowering) -> Node {
    Node { name, place: Place::Farm, once: Some(name), anchor: name, lower: Lowering::Farm(lower) }
}

const fn child(parent: &'static str, name: &'static str, anchor: &'static str) -> Node {
    Node { name, place: Place::In(parent), once: None, anchor, lower: Lowering::ByParent }
}

const fn include(place: Place) -> Node {
    Node { name: "include", place, once: None, anchor: "include", lower: Lowering::Include }
}

/// The policy language, in the order of docs/policy.md section 2.
pub const NODES: &[Node] = &[
    top("hostname", Lowerer::hostname),
    top("banner", Lowerer::banner),
    top("spool", Lowerer::spool),
    top("dns", Lowerer::dns),
    child("dns", "nameserver", "dns"),
    top("admin", Lowerer::admin),
    top("state", Lowerer::state),
    top("journal", Lowerer::journal),
    top("farm", Lowerer::farm),
    include(Place::Top),
    farm("listen", Lowerer::listen),
    once("limits", Lowerer::limits),
    child("limits", "connections", "limits"),
    child("limits", "connections-per-ip", "limits"),
    child("limits", "transfers-per-ip", "limits"),
    child("limits", "message-size", "limits"),
    child("limits", "recipients", "limits"),
    child("limits", "line-length", "limits"),
    child("limits", "errors", "limits"),
    child("limits", "soft-errors", "limits"),
    child("limits", "timeout", "limits"),
    farm("trust-loopback", Lowerer::trust_loopback),
    farm("local-domains", Lowerer::local_domains),
    farm("local-addresses", Lowerer::local_addresses),
    farm("role-accounts", Lowerer::role_accounts),
    farm("relay-clients", Lowerer::relay_clients),
    farm("access", Lowerer::access),
    child("access", "accept", "access"),
    child("access", "reject", "access"),
    child("access", "defer", "access"),
    once("helo", Lowerer::helo),
    once("sender", Lowerer::sender),
    child("sender", "deny", "sender"),
    once("recipient", Lowerer::recipient),
    farm("client", Lowerer::client),
    once("dnsbl", Lowerer::dnsbl),
    child("dnsbl", "zone", "dnsbl"),
    child("zone", "answer", "dnsbl"),
    farm("ban", Lowerer::ban),
    farm("shadow", Lowerer::shadow),
    farm("rate-limit", Lowerer::rate_limit),
    farm("tarpit", Lowerer::tarpit),
    once("screen", Lowerer::screen),
    child("screen", "pregreet", "screen"),
    child("screen", "pipelining", "screen"),
    child("screen", "stress", "screen"),
    once("greylist", Lowerer::greylist),
    child("greylist", "whitelist-client", "greylist"),
    child("greylist", "whitelist-sender-domain", "greylist"),
    child("greylist", "whitelist-recipient", "greylist"),
    farm("recipient-domain", Lowerer::recipient_domain),
    child("recipient-domain", "skip", "recipient-domain"),
    child("recipient-domain", "dnsbl", "recipient-domain"),
    once("spf", Lowerer::spf),
    once("dkim", Lowerer::dkim),
    once("dmarc", Lowerer::dmarc),
    child("dmarc", "never-refuse", "dmarc"),
    child("dmarc", "trust-arc", "dmarc"),
    once("scan", Lowerer::scan),
    child("scan", "clamav", "scan"),
    child("scan", "spamassassin", "scan"),
    child("scan", "rspamd", "scan"),
    once("verdict-headers", Lowerer::verdict_headers),
    once("authserv-id", Lowerer::authserv_id),
    farm("mime", Lowerer::mime),
    child("mime", "forbid-extension", "mime"),
    child("mime", "forbid-type", "mime"),
    child("mime", "require-header", "mime"),
    child("mime", "forged-local-sender", "mime"),
    farm("milter", Lowerer::milter),
    farm("hook", Lowerer::hook),
    once("relay", Lowerer::relay),
    child("relay", "backend", "relay"),
    // `relay` and `deliver` are one way out: they share the once-per-farm key.
    Node { once: Some("relay"), ..once("deliver", Lowerer::deliver) },
    once("tls", Lowerer::tls),
    child("tls", "sni", "tls"),
    once("auth", Lowerer::auth),
    child("auth", "ldap", "auth"),
    child("auth", "user", "auth"),
    child("auth", "may-send-as", "auth"),
    once("dkim-sign", Lowerer::dkim_sign),
    child("dkim-sign", "key", "dkim-sign"),
    once("directory", Lowerer::directory),
    child("directory", "attributes", "directory"),
    child("directory", "filter", "directory"),
    child("directory", "bind", "directory"),
    child("directory", "cache", "directory"),
    once("bare-line-ends", Lowerer::bare_line_ends),
    // A farm may include fragments; described with the top-level `include`.
    include(Place::Farm),
];

/// The entry of `name` at `place`, if the language has one.
pub fn find(place: Place, name: &str) -> Option<&'static Node> {
    NODES.iter().find(|node| node.place == place && node.name == name)
}

/// The names of the nodes that may be written at `place`, in table order.
pub fn names(place: Place) -> Vec<&'static str> {
    NODES.iter().filter(|node| node.place == place).map(|node| node.name).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A policy with `node` written bare where the table says it may be: whatever else is wrong
    /// with it, lowering must know the name.
    fn policy_with(node: &Node) -> String {
        let farm =
            |body: &str| format!("hostname \"mx.example.net\"\nfarm \"mx\" kind=\"inbound-mx\" {{\n{body}\n}}\n");
        match node.place {
            Place::Top => format!("hostname \"mx.example.net\"\n{}\n", node.name),
            Place::Farm => farm(node.name),
            Place::In("zone") => farm(&format!("dnsbl {{ zone \"z.example\" {{ {} }} }}", node.name)),
            Place::In(parent) => {
                let wrap = format!("{parent} {{ {} }}", node.name);
                match NODES.iter().find(|n| n.name == parent).map(|n| n.place) {
                    Some(Place::Top) => format!("hostname \"mx.example.net\"\n{wrap}\n"),
                    _ => farm(&wrap),
                }
            }
        }
    }

    #[test]
    fn lowering_knows_every_node_of_the_table() {
        for node in NODES {
            let text = policy_with(node);
            let compilation = crate::compile_text("policy.kdl", &text, None);
            let unknown: Vec<String> = compilation
                .diagnostics
                .list
                .iter()
                .filter(|d| d.code == "mtac::unknown-node" || d.code == "mtac::kdl::syntax")
                .map(|d| d.message.clone())
                .collect();
            assert!(unknown.is_empty(), "{:?} in {:?}: {unknown:?}\n{text}", node.name, node.place);
        }
    }

    #[test]
    fn lowering_refuses_names_outside_the_table_with_a_suggestion() {
        let text = "hostname \"mx.example.net\"\nfarm \"mx\" kind=\"inbound-mx\" {\n    rate-limits\n    dnsbl { zones }\n}\nnameserver\n";
        let compilation = crate::compile_text("policy.kdl", text, None);
        let unknown: Vec<(String, Option<String>)> = compilation
            .diagnostics
            .list
            .iter()
            .filter(|d| d.code == "mtac::unknown-node" && d.is_error())
            .map(|d| (d.message.clone(), d.help.clone()))
            .collect();
        assert_eq!(unknown.len(), 3, "{unknown:?}");
        assert!(unknown[0].1.as_deref().unwrap().contains("`rate-limit`"), "{unknown:?}");
        assert!(unknown[1].1.as_deref().unwrap().contains("`zone`"), "{unknown:?}");
        assert!(unknown[2].0.contains("the top level"), "{unknown:?}");
    }

    /// The table's place decides: a top-level node written in a farm, and a farm node written at
    /// the top level, are unknown there (with the place's names as help), not lowered.
    #[test]
    fn a_node_is_lowered_only_in_its_place() {
        let text = "hostname \"mx.example.net\"\nlisten \"127.0.0.1:25\"\nfarm \"mx\" kind=\"inbound-mx\" {\n    banner \"hi\"\n}\n";
        let compilation = crate::compile_text("policy.kdl", text, None);
        let unknown: Vec<&str> = compilation
            .diagnostics
            .list
            .iter()
            .filter(|d| d.code == "mtac::unknown-node" && d.is_error())
            .map(|d| d.message.as_str())
            .collect();
        assert_eq!(unknown, ["unknown node `listen` in the top level", "unknown node `banner` in a farm"]);
    }

    #[test]
    fn the_table_is_consistent() {
        for (i, node) in NODES.iter().enumerate() {
            assert!(
                NODES.iter().skip(i + 1).all(|other| other.name != node.name || other.place != node.place),
                "{} is listed twice at {:?}",
                node.name,
                node.place
            );
            if let Place::In(parent) = node.place {
                assert!(NODES.iter().any(|n| n.name == parent), "{}: no parent {parent}", node.name);
            }
            if node.once.is_some() {
                assert_eq!(node.place, Place::Farm, "{}: only farm nodes are once per farm", node.name);
            }
            // The dispatch in `lower` reads `Top` only at the top level, `Farm` only in a farm.
            let lowered_here = match (node.place, node.lower) {
                (Place::Top, Lowering::Top(_)) | (Place::Farm, Lowering::Farm(_)) => true,
                (Place::Top | Place::Farm, Lowering::Include) => node.name == "include",
                (Place::In(_), Lowering::ByParent) => true,
                _ => false,
            };
            assert!(lowered_here, "{} at {:?} has the lowering {:?}", node.name, node.place, node.lower);
        }
        assert_eq!(find(Place::Farm, "deliver").and_then(|node| node.once), Some("relay"));
        assert_eq!(find(Place::Farm, "ban").and_then(|node| node.once), None);
    }

    /// docs/policy.md: section 2 between its heading and section 3's.
    fn docs_section<'a>(docs: &'a str, from: &str, to: &str) -> &'a str {
        let start = docs.find(from).expect("docs/policy.md has the section");
        let rest = &docs[start..];
        let end = rest.find(to).unwrap_or(rest.len());
        &rest[..end]
    }

    fn policy_md() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/policy.md")).unwrap()
    }

    /// Issue 15: the node reference (section 2) has one `#### \`name\`` heading per node of the
    /// table, under "Top level" or "Farm nodes" as the table says, and no heading the table does
    /// not know; each child node is named in its parent's entry.
    #[test]
    fn issue_15_the_docs_node_reference_matches_the_table() {
        let docs = policy_md();
        let reference = docs_section(&docs, "\n## 2. Nodes", "\n## 3. ");
        // (subsection, node name, the entry's text)
        let mut entries: Vec<(&str, &str, &str)> = Vec::new();
        let mut subsection = "";
        for (i, part) in reference.split("\n###").enumerate() {
            if i == 0 {
                continue;
            }
            if let Some(title) = part.strip_prefix(' ') {
                subsection = title.lines().next().unwrap_or("");
            } else if let Some(heading) = part.strip_prefix("# `") {
                let name = heading.split('`').next().unwrap_or("");
                entries.push((subsection, name, heading));
            }
        }
        let mut problems = Vec::new();
        for node in NODES {
            match entries.iter().find(|(_, name, _)| *name == node.anchor) {
                None => problems.push(format!("no entry #### `{}` for the node `{}`", node.anchor, node.name)),
                Some((_, _, text)) => {
                    if matches!(node.place, Place::In(_)) && !text.contains(node.name) {
                        problems.push(format!("the entry `{}` does not name its child `{}`", node.anchor, node.name));
                    }
                }
            }
        }
        for (subsection, name, _) in &entries {
            let place = match *subsection {
                "Top level" => Place::Top,
                "Farm nodes" => Place::Farm,
                other => {
                    problems
                        .push(format!("#### `{name}` is under {other:?}, neither \"Top level\" nor \"Farm nodes\""));
                    continue;
                }
            };
            if !NODES.iter().any(|node| node.anchor == *name && node.name == *name && node.place == place) {
                problems
                    .push(format!("#### `{name}` under {subsection:?} is not such a node in compiler/src/nodes.rs"));
            }
        }
        // "Repeated nodes": the sentence that lists the once-per-farm nodes lists exactly those.
        let once_list = docs_section(&docs, "may appear once per farm:", "(which count as one)");
        for node in NODES.iter().filter(|node| node.place == Place::Farm) {
            let listed = once_list.contains(&format!("`{}`", node.name));
            if listed != node.once.is_some() {
                problems.push(format!("\"Repeated nodes\": `{}` is once per farm: {}", node.name, node.once.is_some()));
            }
        }
        assert!(problems.is_empty(), "docs/policy.md section 2 and the node table differ:\n{}", problems.join("\n"));
    }

    /// Issue 15: "Rule names" (section 3) names every rule of `mtac_ruleset::rules`.
    #[test]
    fn issue_15_the_docs_rule_names_list_every_rule() {
        let docs = policy_md();
        let section = docs_section(&docs, "\n### Rule names", "\n## 4. ");
        let missing: Vec<&str> = mtac_ruleset::rules::RULES
            .iter()
            .map(|rule| rule.name)
            .filter(|name| !section.contains(&format!("`{name}`")))
            .collect();
        assert!(missing.is_empty(), "docs/policy.md \"Rule names\" misses {missing:?}");
    }
}
