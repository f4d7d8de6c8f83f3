//! Access lists (`access`, `relay-clients`): the same network twice, contradictions, overlaps and
//! entries that never fire, found with one sort and a stack of enclosing prefixes; and the open
//! relay a public network in `relay-clients` makes, with a concrete counter-example.

use super::{summarise, Capped};
use crate::diag::{Diag, Reporter};
use crate::lower::{DraftFarm, NetEntry};
use ipnet::IpNet;
use mtac_ruleset::model::AccessAction;
use std::net::IpAddr;

fn action_name(action: &AccessAction) -> &'static str {
    match action {
        AccessAction::Accept => "accept",
        AccessAction::Reject(_) => "reject",
        AccessAction::Defer(_) => "defer",
    }
}

/// Same network twice with different actions is an error; nested networks with different actions
/// are legal (the longer prefix wins) and explained; nested ones with the same action never fire.
pub(super) fn access_conflicts(reporter: &mut Reporter, entries: &[NetEntry], list: &str) {
    // Sort by family, network start, then prefix length: an enclosing prefix comes before what it contains.
    // Equal keys keep list order (the index is the last key). The keys are computed once, beside the
    // index, so that sorting a large list does not chase every entry on each comparison.
    let mut keyed: Vec<(u8, u128, u8, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| match e.net {
            IpNet::V4(n) => (0u8, u128::from(u32::from(n.network())), n.prefix_len(), i),
            IpNet::V6(n) => (1u8, u128::from(n.network()), n.prefix_len(), i),
        })
        .collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.into_iter().map(|(_, _, _, i)| i).collect();
    let mut stack: Vec<usize> = Vec::new();
    let (mut overlaps, mut redundant, mut dups) = (Capped::default(), Capped::default(), Capped::default());
    for &index in &order {
        let Some(entry) = entries.get(index) else { continue };
        while let Some(&top) = stack.last() {
            if entries.get(top).is_some_and(|t| t.net.contains(&entry.net)) {
                break;
            }
            stack.pop();
        }
        if let Some(parent) = stack.last().and_then(|&t| entries.get(t)) {
            let (this, that) = (action_name(&entry.action), action_name(&parent.action));
            // `describe` scans the list file up to the parent's line: call it only for a
            // diagnostic that is listed, not for every nested entry of a large list.
            if parent.net == entry.net {
                if this != that {
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::error(
                            "mtac::access::contradiction",
                            format!("{} is both {that}ed and {this}ed in {list}", entry.net),
                        )
                        .help(format!("the other entry is at {parent_at}; keep one of them")),
                        entry.origin,
                        "contradicts an earlier entry",
                    );
                } else if parent.action == entry.action {
                    if dups.lists_next() {
                        let parent_at = reporter.describe(parent.origin);
                        reporter.report(
                            Diag::warning(
                                "mtac::access::duplicate",
                                format!("{} is listed twice in {list}", entry.net),
                            )
                            .help(format!("first at {parent_at}")),
                            entry.origin,
                            "duplicate",
                        );
                    }
                } else {
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::error(
                            "mtac::access::contradiction",
                            format!("{} is listed twice in {list} with different replies", entry.net),
                        )
                        .help(format!("the other entry is at {parent_at}; keep one reply")),
                        entry.origin,
                        "contradicts an earlier entry",
                    );
                }
            } else if this != that {
                if overlaps.lists_next() {
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::warning(
                            "mtac::access::overlap",
                            format!("{} ({this}) lies inside {} ({that})", entry.net, parent.net),
                        )
                        .help(format!(
                            "the longest prefix wins: {this} for {}, {that} for the rest of {} (at {parent_at})",
                            entry.net, parent.net
                        )),
                        entry.origin,
                        "overrides a wider entry",
                    );
                }
            } else if parent.action == entry.action && redundant.lists_next() {
                let parent_at = reporter.describe(parent.origin);
                reporter.report(
                    Diag::warning("mtac::access::never-fires", format!("{} can never change a decision", entry.net))
                        .help(format!(
                            "{} (at {parent_at}) already {that}s it with the same reply; remove the narrower entry",
                            parent.net
                        )),
                    entry.origin,
                    "redundant",
                );
            }
        }
        stack.push(index);
    }
    let hidden = dups.more + overlaps.more + redundant.more;
    summarise(reporter, hidden, &format!("further overlapping or duplicate entries in {list}"));
}

/// Public networks wider than a /16 (v4) or /32 (v6) in relay-clients make an open relay.
pub(super) fn relay_clients(reporter: &mut Reporter, farm: &DraftFarm) {
    for entry in &farm.relay_clients {
        let too_wide = match entry.net {
            IpNet::V4(n) => n.prefix_len() < 16,
            IpNet::V6(n) => n.prefix_len() < 32,
        };
        if !too_wide {
            continue;
        }
        if let Some(client) = public_address_in(&entry.net) {
            let rcpt = "someone@relay-probe.example";
            reporter.report(
                Diag::error("mtac::open-relay", format!("farm `{}` would relay for anyone in {}", farm.name, entry.net))
                    .help(format!(
                        "counter-example: client {client}, MAIL FROM:<spammer@example.org>, RCPT TO:<{rcpt}> would be relayed. \
                         List only your own networks in relay-clients; users authenticate on a submission farm"
                    )),
                entry.origin,
                "open relay",
            );
        }
    }
    access_conflicts(reporter, &farm.relay_clients, "relay-clients");
}

/// A globally routable address inside `net`, if there is one (for counter-examples).
fn public_address_in(net: &IpNet) -> Option<IpAddr> {
    let candidates: [IpAddr; 8] = [
        net.network(),
        IpAddr::from([8, 8, 8, 8]),
        IpAddr::from([1, 1, 1, 1]),
        IpAddr::from([45, 1, 2, 3]),
        IpAddr::from([100, 1, 2, 3]),
        IpAddr::from([200, 1, 2, 3]),
        "2001:4860:4860::8888".parse().unwrap_or(IpAddr::from([0u8; 16])),
        "2a00:1450::1".parse().unwrap_or(IpAddr::from([0u8; 16])),
    ];
    candidates.into_iter().find(|ip| net.contains(ip) && is_global(*ip))
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments().first().copied().unwrap_or(0);
            (0x2000..0x4000).contains(&first) && !(first == 0x2001 && v6.segments().get(1) == Some(&0x0db8))
        }
    }
}
