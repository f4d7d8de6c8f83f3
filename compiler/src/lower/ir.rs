//! The draft IR: what lowering produces from the policy (docs/policy.md section 2, all of it),
//! with the origin of every entry, for `validate/` and `emit.rs` to read.

use ipnet::IpNet;
use mtac_ruleset::model::{
    AccessAction, Auth, Backend, BanResponse, BanScope, BarePolicy, Directory, DkimSign, DnsSettings, DnsblAnswer,
    DnsblTarget, FarmKind, GreylistKey, Listener, MimeRules, RateLimit, Reply, ScannerKind, Stage, StateSettings,
};
use std::net::SocketAddr;

pub use crate::diag::{Origin, Pos};

#[derive(Debug, Clone)]
pub struct DomainEntry {
    pub domain: String,
    pub subdomains: bool,
    pub origin: Origin,
}

/// One `recipient-domain` block: what changes for recipients of its domains.
#[derive(Debug, Clone)]
pub struct DraftRecipientDomain {
    pub domains: Vec<DomainEntry>,
    pub sources: Sources,
    /// `skip "RULE"…`, where each was named.
    pub skip: Vec<(String, Origin)>,
    /// `dnsbl threshold=N`, where it was written.
    pub dnsbl_threshold: Option<(i32, Origin)>,
    /// The block itself.
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct AddressEntry {
    pub address: String,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct NetEntry {
    pub net: IpNet,
    pub action: AccessAction,
    pub origin: Origin,
}

/// A list that may come from inline values and files: which sources fed it.
#[derive(Debug, Clone, Default)]
pub struct Sources(pub Vec<String>);

impl Sources {
    pub(super) fn add(&mut self, name: &str) {
        if !self.0.iter().any(|s| s == name) {
            self.0.push(name.to_owned());
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeloRules {
    pub required: bool,
    pub fqdn: bool,
    pub syntax: bool,
    pub not_ours: bool,
    pub resolvable: bool,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone, Default)]
pub struct SenderRules {
    pub fqdn: bool,
    pub resolvable: bool,
    pub deny_domains: Vec<DomainEntry>,
    pub deny_addresses: Vec<AddressEntry>,
    pub deny_sources: Sources,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone)]
pub struct DraftZone {
    pub zone: String,
    pub target: DnsblTarget,
    pub answers: Vec<DnsblAnswer>,
    /// `verified=#true`: the zone's allow listings count only for an SPF-verified sender domain.
    pub verified: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftDnsbl {
    pub threshold: i32,
    pub allow_threshold: Option<i32>,
    pub zones: Vec<DraftZone>,
    pub stage: Option<Stage>,
    pub reply: Option<Reply>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftBan {
    pub after: Vec<(String, Origin)>,
    pub seconds: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub scope: BanScope,
}

#[derive(Debug, Clone)]
pub struct DraftGreylist {
    pub key: GreylistKey,
    pub delay: u32,
    pub retry_window: u32,
    pub lifetime: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub auto_whitelist: u32,
    pub clients: Vec<NetEntry>,
    pub sender_domains: Vec<DomainEntry>,
    /// `whitelist-sender-domain … verified=#true`: honoured only when SPF passed for the sender.
    pub verified_sender_domains: Vec<DomainEntry>,
    pub recipients: Vec<AddressEntry>,
    pub reply: Option<Reply>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftScanner {
    pub kind: ScannerKind,
    pub address: String,
    pub timeout: u32,
    pub fail_open: bool,
    pub tag_score: Option<i32>,
    pub reject_score: Option<i32>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum DraftRelay {
    Backends(Vec<Backend>),
    Maildir(String),
}

#[derive(Debug, Clone)]
pub struct DraftTls {
    pub certificate: String,
    pub key: String,
    pub required: bool,
    /// The host name clients connect to for this farm (`name=`; default: the policy's hostname).
    pub name: Option<String>,
    /// `sni "NAME" certificate=… key=…`: other certificates, chosen by the name a client asks.
    pub sni: Vec<DraftSni>,
    pub origin: Origin,
}

/// One `sni` child of `tls`.
#[derive(Debug, Clone)]
pub struct DraftSni {
    /// Lower-cased; `*.example.com` covers one label under it.
    pub name: String,
    pub certificate: String,
    pub key: String,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftLimits {
    pub connections: u32,
    pub connections_per_ip: u32,
    pub transfers_per_ip: u32,
    pub message_size: u64,
    pub recipients: u32,
    pub line_length: u32,
    pub errors: u32,
    pub soft_errors: u32,
    pub command_timeout: u32,
    pub data_timeout: u32,
    pub relay_timeout: u32,
    /// `timeout pregreet=`, as written; unwritten, the farm kind's default (see emit).
    pub pregreet: Option<u32>,
}

impl Default for DraftLimits {
    fn default() -> Self {
        // Defaults of a careful public MX: Postfix's values where they are sound.
        DraftLimits {
            connections: 10_000,
            connections_per_ip: 20,
            // Enough for a big sender's parallel deliveries from one address, few enough that
            // one client cannot fill the RAM-disk spool for everyone else.
            transfers_per_ip: 5,
            message_size: 25 * 1024 * 1024,
            recipients: 100,
            line_length: 2048,
            // Postfix's smtpd_hard_error_limit and smtpd_soft_error_limit: an audit's sixteen
            // relay probes and a list with a few departed recipients finish.
            errors: 20,
            soft_errors: 10,
            command_timeout: 300,
            data_timeout: 600,
            relay_timeout: 120,
            pregreet: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DraftFarm {
    pub name: String,
    pub origin: Origin,
    pub kind: FarmKind,
    pub listeners: Vec<(Listener, Origin)>,
    pub limits: DraftLimits,
    pub trust_loopback: bool,
    pub local_domains: Vec<DomainEntry>,
    pub local_domain_sources: Sources,
    pub local_addresses: Vec<AddressEntry>,
    pub local_address_sources: Sources,
    pub role_accounts: Vec<String>,
    pub access: Vec<NetEntry>,
    pub access_sources: Sources,
    pub access_stage: Option<Stage>,
    pub relay_clients: Vec<NetEntry>,
    pub relay_client_sources: Sources,
    pub helo: HeloRules,
    pub sender: SenderRules,
    pub recipient_fqdn: bool,
    pub dnsbl: Option<DraftDnsbl>,
    pub bans: Vec<DraftBan>,
    /// `shadow`: rules that only report what they would refuse, where each was named.
    pub shadow: Vec<(String, Origin)>,
    /// `recipient-domain` blocks, in policy order.
    pub recipient_domains: Vec<DraftRecipientDomain>,
    pub greylist: Option<DraftGreylist>,
    pub scanners: Vec<DraftScanner>,
    /// `scan max-size=` (default: the farm's message size).
    pub scan_max_size: Option<u64>,
    /// `scan oversize="pass"`, where it was written: the only way a message escapes the scanners.
    pub scan_oversize_pass: Option<Origin>,
    /// `verdict-headers`: extra field names, rename instead of remove, where it was written.
    pub verdict_headers: Option<(Vec<String>, bool)>,
    /// `authserv-id`: this farm's name in Authentication-Results (default: the host name).
    pub authserv_id: Option<String>,
    pub mime: Option<MimeRules>,
    /// `milter` and `hook`, in policy order.
    pub filters: Vec<mtac_ruleset::model::Filter>,
    pub relay: Option<(DraftRelay, Origin)>,
    pub tls: Option<DraftTls>,
    pub auth: Option<(Auth, Origin)>,
    /// `dkim-sign`, its keys checked, where it was written.
    pub dkim_sign: Option<(DkimSign, Origin)>,
    pub directory: Option<(Directory, Origin)>,
    pub bare_line_ends: BarePolicy,
    /// `client reverse-dns=…`: whether forward confirmation is required, and the stage.
    pub client_reverse_dns: Option<(bool, Option<Stage>)>,
    pub ban_response: Option<(BanResponse, Origin)>,
    pub rate_limits: Vec<RateLimit>,
    pub tarpit_ms: u32,
    pub screen: DraftScreen,
    /// `spf`: SPF at MAIL FROM.
    pub spf: Option<mtac_ruleset::model::SpfSettings>,
    /// `dkim` / `dkim #false`, as written (DMARC turns it on unless it says `#false`).
    pub dkim: Option<bool>,
    /// `dmarc`.
    pub dmarc: Option<super::sender_auth::DraftDmarc>,
}

/// `screen`, as written (defaults in `lower/screen.rs`).
#[derive(Debug, Clone)]
pub struct DraftScreen {
    /// `pregreet #false`.
    pub pregreet_off: bool,
    pub pregreet_remember: u32,
    pub pregreet_talker: mtac_ruleset::model::TalkerAction,
    /// `pipelining #false`.
    pub pipelining_off: bool,
    pub pipelining_reply: Option<mtac_ruleset::model::Reply>,
    pub stress: Option<mtac_ruleset::model::Stress>,
}

#[derive(Debug, Default)]
pub struct Draft {
    pub hostname: Option<(String, Origin)>,
    pub banner: Option<String>,
    pub spool: Option<String>,
    /// `spool max-bytes=`.
    pub spool_max_bytes: Option<u64>,
    pub dns: DnsSettings,
    /// `None`: not said (the default address); `Some(None)`: `admin #false`.
    pub admin: Option<Option<SocketAddr>>,
    /// `None`: not said (the default path in the spool); `Some(None)`: `socket=#false`.
    pub admin_socket: Option<Option<String>>,
    pub state: Option<StateSettings>,
    /// `journal` (`None`: off).
    pub journal: Option<mtac_ruleset::model::JournalSettings>,
    pub farms: Vec<DraftFarm>,
}
