//! The integration tests of the `mtac` binary and its crates, in one test binary (link time on
//! two cores). Paths are relative to the repository root, where cargo runs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod admin;
mod architecture;
mod auth_bans;
mod backend_pipelining;
mod backend_tls;
mod chunking;
mod cli;
mod directory;
mod dkim_sign;
mod dnsbl;
mod explain_node;
mod greylist;
mod greylist_spf;
mod inspect_settings;
mod journal;
mod milter;
mod milter_live;
mod node;
mod policies;
mod process;
mod proxy;
mod runtime;
mod scan;
mod screening;
mod sender_auth;
mod sentinel;
mod shadow;
mod sink;
mod sni;
mod state_tools;
mod submission;
mod support;
mod tls_load;
mod tools;
mod trust_defects;
mod untrusted_policy;
