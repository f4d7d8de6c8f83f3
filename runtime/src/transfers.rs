//! Message transfers in flight per client: one client cannot hold the RAM-disk spool (and the
//! scanners behind it) for everyone else.
//!
//! A transfer is a transaction from the `MAIL` that opens it to the end of its DATA (or its
//! RSET). The node-wide budget of bytes (the spool's, [`crate::spool::Spool::has_room_for`])
//! bounds the total; this bounds one client's share of it: twenty sessions from one address
//! each sending 10 MiB would otherwise take 200 MiB of a shared RAM disk. The table is touched
//! twice per transaction (open, close), never per byte.

use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open transfers per client network (IPv4 address, IPv6 /64).
#[derive(Debug, Default)]
pub struct Transfers {
    open: Mutex<HashMap<IpNet, u32>>,
}

/// One open transfer; closing it (dropping) gives its place back.
#[derive(Debug)]
pub struct TransferSlot {
    table: Arc<Transfers>,
    client: IpNet,
}

impl Transfers {
    /// Open a transfer for `ip` if it has fewer than `max` open. An IPv6 host owns a /64: it is
    /// one client, as for connection limits and bans.
    pub fn open(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<TransferSlot> {
        let client = crate::guard::network(ip, 32, 64);
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(TransferSlot { table: self.clone(), client })
    }

    /// Transfers open now, all clients together.
    pub fn in_flight(&self) -> u64 {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().map(|&n| u64::from(n)).sum()
    }
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_client_holds_at_most_its_share_and_gets_it_back() {
        let table = Arc::new(Transfers::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.open(a, 2).unwrap();
        let _second = table.open(same_64, 2).unwrap();
        assert!(table.open(a, 2).is_none(), "a /64 is one client");
        assert!(table.open(other, 2).is_some(), "others are not affected");
        drop(first);
        assert!(table.open(same_64, 2).is_some(), "a closed transfer gives its place back");
        assert_eq!(table.in_flight(), 1);
    }
}
