//! What a journal keeps of personal data: addresses (sender, recipient, the authenticated user)
//! and the client's IP address, as the policy's `journal addresses=` and `client-ip=` say.
//!
//! A pseudonymised local part is `h-` and 16 hex digits of a BLAKE3 hash keyed with 32 random
//! bytes made when the journal starts and never written anywhere: within one node's run one
//! address keeps one pseudonym (so "how many decisions for this recipient" still counts right),
//! and without the key no one can confirm a guessed address against the file.
//!
//! What such a record cannot replay: any decision that reads the local part — the address
//! tables (`local-addresses`, `access` entries for addresses, directory exports), role accounts,
//! `may_send_as` — sees a pseudonym that matches nothing. A truncated client IP changes every
//! access-list and DNS-list decision on addresses in the network. So each record says what was
//! replaced ([`RecordedFacts::redacted`](super::RecordedFacts)), and `mtac diff` counts those
//! decisions apart instead of pretending they replay.

use super::RecordedFacts;
use crate::model::{AddressPrivacy, IpPrivacy};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A record's local parts (or user name) were pseudonymised or dropped.
pub const REDACTED_LOCAL_PARTS: u8 = 1;
/// A record's client IP was truncated to its network.
pub const REDACTED_CLIENT_IP: u8 = 2;

/// A journal's privacy settings and its pseudonym key.
#[derive(Clone)]
pub struct Privacy {
    pub addresses: AddressPrivacy,
    pub client_ip: IpPrivacy,
    key: [u8; 32],
}

impl std::fmt::Debug for Privacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Privacy").field("addresses", &self.addresses).field("client_ip", &self.client_ip).finish()
    }
}

impl Privacy {
    /// `key`: random bytes, made once per journal (the node uses ring's system random).
    pub fn new(addresses: AddressPrivacy, client_ip: IpPrivacy, key: [u8; 32]) -> Privacy {
        Privacy { addresses, client_ip, key }
    }

    /// With a fresh random key (ring's system random): one per journal started.
    pub fn generate(addresses: AddressPrivacy, client_ip: IpPrivacy) -> Result<Privacy, ring::error::Unspecified> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)?;
        Ok(Privacy::new(addresses, client_ip, key))
    }

    /// Keep everything.
    pub fn full() -> Privacy {
        Privacy::new(AddressPrivacy::Full, IpPrivacy::Full, [0; 32])
    }

    /// Replace what the settings say in `facts`, and mark it.
    pub fn apply(&self, facts: &mut RecordedFacts) {
        if self.addresses != AddressPrivacy::Full {
            let mut replaced = false;
            for address in [&mut facts.sender, &mut facts.recipient].into_iter().flatten() {
                replaced |= self.address(address);
            }
            if let Some(user) = facts.user.as_mut() {
                // A user name is often an address; either way it names a person.
                if !self.address(user) {
                    *user = self.pseudonym(user);
                }
                replaced = true;
            }
            if replaced {
                facts.redacted |= REDACTED_LOCAL_PARTS;
            }
        }
        if self.client_ip == IpPrivacy::Network {
            facts.client_ip = network(facts.client_ip);
            facts.redacted |= REDACTED_CLIENT_IP;
        }
    }

    /// Replace the local part of `address` in place; `false` when it has none (`<>`,
    /// `postmaster`).
    fn address(&self, address: &mut String) -> bool {
        let Some((local, domain)) = crate::syntax::split_address(address) else { return false };
        let local = match self.addresses {
            AddressPrivacy::Full => return false,
            AddressPrivacy::Pseudonymous => self.pseudonym(local),
            AddressPrivacy::Domain => "redacted".to_owned(),
        };
        *address = format!("{local}@{domain}");
        true
    }

    fn pseudonym(&self, text: &str) -> String {
        let hash = blake3::keyed_hash(&self.key, text.as_bytes());
        let mut out = String::with_capacity(18);
        out.push_str("h-");
        for byte in hash.as_bytes().iter().take(8) {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

/// The client's network: IPv4 /24, IPv6 /48.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & 0xffff_ff00)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !((1u128 << 80) - 1))),
    }
}
