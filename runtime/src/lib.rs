//! # mtac-runtime: the node
//!
//! `mtac run` serves every farm of a ruleset: one tokio task per connection, decisions from the
//! memory-mapped ruleset at the stages the policy names, DATA spooled to a RAM disk, and relay
//! without a queue — the client gets 250 only after the back end said 250.
//!
//! - [`smtp`]: the protocol pieces, sans I/O (framing, commands, DATA, replies);
//! - [`session`]: the session state machine, sans I/O; policy decisions via the ruleset's evaluator;
//! - [`conn`]: one connection's I/O around a session: deadlines, pipelining, spool, relay;
//! - [`dns`]: DNS lists, sender domains, reverse DNS and zone health, over a cached resolver;
//! - [`auth`], [`directory`]: SMTP AUTH credentials, and recipients validated against LDAP;
//! - [`relay`]: the SMTP/LMTP client of the back ends, with failover and a small pool;
//! - [`spool`], [`maildir`], [`received`]: the message's way through the node;
//! - [`node`]: the node's lifetime: listeners, connection limits, hot reload, background tasks,
//!   graceful stop;
//! - [`shared`]: what sessions, the admin listener and the node share: the ruleset snapshot,
//!   node-wide tables, the stop state;
//! - [`admin`], [`metrics`]: the admin listener and socket (Prometheus metrics, health, status,
//!   state) and the one registry of the node's counts.
//!
//! Layers: `node` → {`conn`, `admin`} → `shared`, never back (the `tidy` test keeps it so).
//!
//! **Invariant:** the runtime never parses KDL; it reads only compiled rulesets.
//! **Invariant:** mtac never queues: a message is relayed while its sender waits, or refused
//! with a 4xx/5xx.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod conn;
pub mod directory;
pub mod dkim_sign;
pub mod dns;
pub mod guard;
pub mod hook;
pub mod journal;
pub mod lookups;
pub mod maildir;
pub mod metrics;
pub mod milter;
pub mod node;
pub mod proxy;
pub mod received;
pub mod relay;
pub mod relayed;
pub mod scan;
pub mod screen;
pub mod sender_auth;
pub mod session;
pub mod shared;
pub mod smtp;
pub mod spool;
pub mod state;
pub mod tls;
pub mod transfers;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tidy;

pub use node::{run, AdminAddress, CandidateConfig, Listeners, Loader, Node, RunConfig, RunError, BUSY_SHARE};

/// This machine's host name (uname's nodename), for logs; empty when it is not UTF-8.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_str().unwrap_or_default().to_owned()
}
