//! Bans shared through Redis: the key a ban is stored under and the announcement every node
//! mirrors into its in-memory `Bans` (`crate::guard`), so the accept path never waits on Redis.
//! Both carry the farm a ban holds for, and both read what older nodes wrote (no farm: every
//! farm). **Invariant:** `parse_*` reads back exactly what `ban_key`/`ban_message` write.

use crate::guard::BanFarm;
use ipnet::IpNet;

/// The pub/sub channel of ban announcements.
pub const BAN_CHANNEL: &str = "mtac:bans";

/// `mtac:ban:NETWORK@FARM` for a farm's ban, `mtac:ban:NETWORK` for one that holds for every
/// farm (what every ban was before bans carried their farm: a node of the older version still
/// reads them right). A network never contains `@`, a farm name may contain anything.
pub fn ban_key(farm: &BanFarm, network: IpNet) -> String {
    match farm {
        BanFarm::Farm(name) => format!("mtac:ban:{network}@{name}"),
        BanFarm::All => format!("mtac:ban:{network}"),
    }
}

/// The farm and network of a ban key; `None` for a key that is not one.
pub fn parse_ban_key(key: &str) -> Option<(BanFarm, IpNet)> {
    let rest = key.strip_prefix("mtac:ban:")?;
    match rest.split_once('@') {
        Some((net, farm)) => Some((BanFarm::Farm(farm.to_owned()), net.parse().ok()?)),
        None => Some((BanFarm::All, rest.parse().ok()?)),
    }
}

/// The announcement on [`BAN_CHANNEL`]: `NETWORK SECONDS [FARM]` (no farm: every farm, as older
/// nodes announce). 0 seconds lifts the ban.
pub fn ban_message(farm: &BanFarm, network: IpNet, seconds: u64) -> String {
    match farm {
        BanFarm::Farm(name) => format!("{network} {seconds} {name}"),
        BanFarm::All => format!("{network} {seconds}"),
    }
}

/// Read an announcement; `None` for one that is not.
pub fn parse_ban_message(message: &str) -> Option<(BanFarm, IpNet, u64)> {
    let mut parts = message.splitn(3, ' ');
    let net = parts.next()?.parse().ok()?;
    let seconds = parts.next()?.parse().ok()?;
    let farm = parts.next().map_or(BanFarm::All, |name| BanFarm::Farm(name.to_owned()));
    Some((farm, net, seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ban_keys_and_announcements_carry_the_farm_and_read_back() {
        let net: IpNet = "2001:db8:1:2::/64".parse().unwrap();
        for farm in [BanFarm::Farm("sub mission@x".into()), BanFarm::All] {
            assert_eq!(parse_ban_key(&ban_key(&farm, net)), Some((farm.clone(), net)));
            assert_eq!(parse_ban_message(&ban_message(&farm, net, 60)), Some((farm.clone(), net, 60)));
        }
        assert_eq!(ban_key(&BanFarm::Farm("users".into()), net), "mtac:ban:2001:db8:1:2::/64@users");
        // An announcement of an older node: every farm.
        assert_eq!(parse_ban_message("192.0.2.0/24 600"), Some((BanFarm::All, "192.0.2.0/24".parse().unwrap(), 600)));
        assert_eq!(parse_ban_message("nonsense"), None);
        assert_eq!(parse_ban_key("mtac:ban:garbage@mx"), None);
    }
}
