//! The compiled policy: what the compiler checked and the runtime obeys.
//!
//! These types are the contract between `mtac build` and `mtac run`. The compiler fills them from a
//! checked KDL policy; the ruleset file stores them (postcard-encoded) in its `Policy` section next to
//! the large lookup tables, which stay memory-mapped and are referenced here by [`TableId`].
//!
//! Everything here is plain data: no paths are opened, no names resolved. Durations are whole
//! seconds, sizes are bytes, and every reply text was sanitised by the compiler (no CR, LF or NUL).

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

/// Index of a lookup table inside the ruleset (its section id).
pub type TableId = u32;

/// The whole node: one ruleset drives every listener of every farm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The node's own host name: greeting, Received headers, "not our own name" HELO check.
    pub hostname: String,
    /// Text after the host name in the 220 greeting.
    pub banner: String,
    /// Directory of the RAM-disk spool.
    pub spool: String,
    /// The most bytes all messages in flight may hold in the spool at once (`None`: a share of
    /// the spool's file system, measured when the node starts). Beyond it a transfer gets 452.
    pub spool_max_bytes: Option<u64>,
    /// Every farm this node serves.
    pub farms: Vec<Farm>,
    /// Where each table came from, for `mtac inspect` (indexed by [`TableId`]).
    pub tables: Vec<TableInfo>,
    /// How the node resolves names (DNS lists, sender domains, reverse DNS).
    pub dns: DnsSettings,
    /// The admin listener (metrics, health, status); `None` turns it off.
    pub admin: Option<SocketAddr>,
    /// The admin socket (a unix socket, mode 0600): state queries, ban list and unban, which the
    /// TCP listener does not serve. `None` turns it off.
    pub admin_socket: Option<String>,
    /// Where greylist entries (and, with Redis, bans) live.
    pub state: StateSettings,
    /// The decision journal (`None`: off, the default).
    pub journal: Option<JournalSettings>,
}

/// `journal`: every decision's facts and outcome, written for `mtac diff` to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalSettings {
    /// The current file; rotated ones are `PATH.1` … `PATH.(files-1)`.
    pub path: String,
    /// The most bytes all the journal's files hold together.
    pub max_size: u64,
    /// How many files share `max_size` (the current one included).
    pub files: u32,
    pub addresses: AddressPrivacy,
    pub client_ip: IpPrivacy,
}

/// What a journal keeps of an address (addresses are personal data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressPrivacy {
    /// As given.
    Full,
    /// The local part replaced by a keyed hash (the key made when the journal starts, never
    /// written): one address keeps one pseudonym while the node runs, and cannot be read back.
    Pseudonymous,
    /// The local part dropped: only the domain is kept.
    Domain,
}

impl AddressPrivacy {
    pub const NAMES: [&'static str; 3] = ["full", "pseudonymous", "domain"];

    pub fn as_str(self) -> &'static str {
        match self {
            AddressPrivacy::Full => "full",
            AddressPrivacy::Pseudonymous => "pseudonymous",
            AddressPrivacy::Domain => "domain",
        }
    }

    pub fn parse(text: &str) -> Option<AddressPrivacy> {
        [AddressPrivacy::Full, AddressPrivacy::Pseudonymous, AddressPrivacy::Domain]
            .into_iter()
            .find(|m| m.as_str() == text)
    }
}

/// What a journal keeps of the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpPrivacy {
    Full,
    /// The network only: IPv4 /24, IPv6 /48.
    Network,
}

impl IpPrivacy {
    pub fn as_str(self) -> &'static str {
        match self {
            IpPrivacy::Full => "full",
            IpPrivacy::Network => "network",
        }
    }

    pub fn parse(text: &str) -> Option<IpPrivacy> {
        [IpPrivacy::Full, IpPrivacy::Network].into_iter().find(|m| m.as_str() == text)
    }
}

/// The state store: greylist triplets, auto-whitelist counts, bans shared across a farm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateSettings {
    /// A file on the node (redb); survives restarts; one node's view only.
    Embedded { path: String },
    /// A Redis server shared by the farm.
    Redis {
        url: String,
        /// Per command, milliseconds.
        timeout_ms: u32,
        /// When Redis cannot answer: accept (and log) instead of deferring with 451.
        fail_open: bool,
    },
    /// A Redis primary found through Redis Sentinel, followed across failovers.
    RedisSentinel {
        /// The sentinels, `host:port` each, asked in order.
        sentinels: Vec<String>,
        /// The name the sentinels monitor the primary under.
        service: String,
        /// The database number.
        db: i64,
        /// Per command, milliseconds.
        timeout_ms: u32,
        /// When Redis cannot answer (a failover among others): accept instead of deferring.
        fail_open: bool,
    },
}

/// The embedded store's file when the policy does not say.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/mtac/state.redb";

impl Default for StateSettings {
    fn default() -> Self {
        StateSettings::Embedded { path: DEFAULT_STATE_PATH.to_owned() }
    }
}

/// Where the admin listener listens when the policy does not say: loopback only, so that
/// metrics and status never face the internet by accident.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9325);

/// The spool directory when the policy does not say.
pub const DEFAULT_SPOOL: &str = "/dev/shm/mtac";

/// The admin socket's file name in the spool directory when the policy does not say: the
/// spool belongs to the node's user and exists wherever a node runs.
pub const ADMIN_SOCKET_NAME: &str = "admin.sock";

/// The node's resolver. No nameservers: the system's (/etc/resolv.conf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettings {
    pub nameservers: Vec<SocketAddr>,
    /// Per query, milliseconds.
    pub timeout_ms: u32,
    /// Cached answers kept (positive and negative, each for its TTL).
    pub cache_size: u32,
    /// Seconds between health probes of each DNS list zone.
    pub probe_interval: u32,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings { nameservers: Vec::new(), timeout_ms: 2000, cache_size: 20_000, probe_interval: 300 }
    }
}

/// What a table holds and where its entries came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub kind: TableKind,
    /// Human-readable name, e.g. `mx.local-domains`.
    pub name: String,
    /// Entry count.
    pub entries: u64,
    /// Files (and "inline") that contributed entries.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TableKind {
    Domains,
    Addresses,
    Prefixes,
}

/// The two kinds of farm mtac is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FarmKind {
    /// Public port 25: every anti-spam check, local recipients only.
    InboundMx,
    /// Ports 587/465: TLS and AUTH required, light checks.
    Submission,
}

impl FarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FarmKind::InboundMx => "inbound-mx",
            FarmKind::Submission => "submission",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Farm {
    pub name: String,
    pub kind: FarmKind,
    pub listeners: Vec<Listener>,
    pub limits: Limits,
    /// Loopback clients are exempt from per-IP connection limits only when this is set.
    pub trust_loopback: bool,
    /// Domains this farm receives mail for (subdomains included where the policy said so).
    pub local_domains: Option<TableId>,
    /// Known recipient addresses; when present, recipients of a local domain must be listed.
    pub local_addresses: Option<TableId>,
    /// Local parts always accepted at every local domain (postmaster, abuse…), lowercase.
    pub role_accounts: Vec<String>,
    /// Client access list: prefix → index into `access_actions`.
    pub access: Option<TableId>,
    pub access_actions: Vec<AccessAction>,
    /// Networks allowed to relay to any domain (like Postfix's mynetworks).
    pub relay_clients: Option<TableId>,
    /// The decision program, one list of steps per stage.
    pub program: Program,
    pub dnsbl: Option<Dnsbl>,
    pub bans: Vec<BanRule>,
    pub greylist: Option<Greylist>,
    pub scanners: Vec<Scanner>,
    /// Messages larger than this (as the sender sent them) are not handed to the scanners.
    /// Defaults to the farm's message size, so no accepted message escapes the scan.
    pub scan_max_size: u64,
    /// A message too large to scan is refused (552) instead of passing unscanned.
    pub scan_oversize_refuse: bool,
    /// Header fields a sender may not hand on as if mtac had written them.
    pub verdict_headers: VerdictHeaders,
    /// Attachment and header rules, checked after DATA (before the scanners).
    pub mime: Option<MimeRules>,
    /// Milters and HTTP hooks, asked in policy order after the scanners (`milter`, `hook`).
    pub filters: Vec<Filter>,
    pub relay: Relay,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    /// DKIM signing of authenticated users' mail (`dkim-sign`).
    pub dkim_sign: Option<DkimSign>,
    /// Recipients validated against a directory (LDAP) at RCPT.
    pub directory: Option<Directory>,
    /// What to do with bare CR, bare LF and NUL in DATA.
    pub bare_line_ends: BarePolicy,
    /// How a banned client is turned away.
    pub ban_response: BanResponse,
    /// Connection and message rates per client address or network.
    pub rate_limits: Vec<RateLimit>,
    /// Delay before answering a refused command, in milliseconds (0 = none).
    pub tarpit_ms: u32,
    /// The early-talker, pipelining and stress screens.
    pub screen: Screen,
    /// SPF, DKIM, ARC and DMARC verification and what their verdicts decide.
    pub sender_auth: SenderAuth,
    /// `recipient-domain` blocks: what changes for recipients of given local domains.
    pub recipient_domains: RecipientDomains,
}

/// Checks overridden per recipient domain (docs/policy.md `recipient-domain`): an ISP's customer
/// domain that opts out of greylisting, another with a stricter DNS list threshold. Decided per
/// recipient, at RCPT, by the evaluator (`eval::recipient_domain_policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDomains {
    /// Recipient domain → index into `policies`; most specific match wins, as in `local-domains`.
    pub table: Option<TableId>,
    pub policies: Vec<RecipientDomainPolicy>,
}

/// One `recipient-domain` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDomainPolicy {
    /// The domains as written (`.example.com`: the subdomains too), for `explain` and settings.
    pub domains: Vec<String>,
    /// Rules of the farm's RCPT stage these recipients are not subject to (anti-spam checks only:
    /// relay control, recipient validation and access are never skipped).
    pub skip: Vec<String>,
    /// The DNS list score at which these recipients refuse the client, instead of the farm's.
    pub dnsbl_threshold: Option<i32>,
}

/// Which sender authentication checks a farm runs and what their verdicts decide
/// (docs/policy.md `spf`, `dkim`, `dmarc`). Nothing written: nothing checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderAuth {
    /// SPF at MAIL FROM (and of the HELO name); `None`: not checked.
    pub spf: Option<SpfSettings>,
    /// DKIM signatures and the ARC chain verified after DATA (always when `dmarc` is set).
    pub dkim: bool,
    /// DMARC evaluated after DATA; `None`: not evaluated.
    pub dmarc: Option<DmarcSettings>,
}

impl SenderAuth {
    /// Does the message need verifying after DATA (DKIM, ARC, DMARC)?
    pub fn after_data(&self) -> bool {
        self.dkim || self.dmarc.is_some()
    }

    /// Does anything here write an Authentication-Results field?
    pub fn any(&self) -> bool {
        self.spf.is_some() || self.after_data()
    }
}

/// What a DNS failure during a check means: the message waits, or goes on with the verdict
/// `temperror` recorded. Never a permanent refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnTempError {
    /// 451: the sender retries later.
    Defer,
    /// Accepted; `temperror` is recorded in Authentication-Results.
    Pass,
}

/// What a verdict the domain owner asks to refuse does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnFail {
    /// Refused with a 5xx.
    Refuse,
    /// Accepted; the verdict is recorded in Authentication-Results.
    Record,
}

/// SPF (RFC 7208) at MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpfSettings {
    /// `fail` (`-all` matched): refused with 550 5.7.23 (RFC 7372), or recorded.
    pub fail: OnFail,
    pub temperror: OnTempError,
    /// Also check the HELO identity (recorded as `spf … smtp.helo=`; MAIL FROM's verdict decides).
    pub helo: bool,
}

/// What a DMARC `p=quarantine` failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnQuarantine {
    /// Relayed with `dmarc=fail … policy.dmarc=quarantine` in Authentication-Results, for the
    /// mail store's filters (a Junk folder).
    Header,
    Refuse,
    Defer,
}

/// DMARC (RFC 7489) after DATA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmarcSettings {
    /// A failing message of a domain that publishes `p=reject`.
    pub reject: OnFail,
    pub quarantine: OnQuarantine,
    pub temperror: OnTempError,
    /// Author domains (and their subdomains) never refused for DMARC: mailing lists that
    /// rewrite messages, forwarders the operator knows.
    pub never_refuse: Option<TableId>,
    /// ARC sealers (the `d=` of the newest ARC-Seal, with subdomains) whose valid chain excuses
    /// a DMARC failure when their ARC-Authentication-Results record dmarc=pass for the same
    /// author domain: the forwarders whose own checks the operator trusts.
    pub trust_arc: Option<TableId>,
}

/// The header fields that carry a verdict of this node or its scanners. Copies the sender wrote
/// are removed (or renamed) while DATA streams into the spool, so the back end only ever sees
/// the verdicts mtac itself wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictHeaders {
    /// Field names, lowercase: the built-in ones and the policy's own.
    pub names: Vec<String>,
    /// `Authentication-Results` fields naming one of these authserv-ids (lowercase) are the
    /// farm's own (RFC 8601 §5): inbound copies are forged.
    pub authserv_ids: Vec<String>,
    /// Rename to `X-Original-NAME` instead of removing.
    pub rename: bool,
}

/// How a banned client's new connections are turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanResponse {
    /// `521 5.3.2` and close at once (RFC 7504): the cheapest answer.
    Close521,
    /// A session that refuses every RCPT, with short timeouts: for senders that retry a 521 at once.
    RefuseRecipients,
}

/// What a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateSubject {
    Connections,
    Messages,
}

/// At most `limit` of `subject` per `window` seconds from one client network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub subject: RateSubject,
    pub limit: u32,
    pub window: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BarePolicy {
    /// Refuse the message (550 5.5.2, the framing violation of RFC 5321 2.3.8).
    Reject,
    /// Turn bare CR/LF into CRLF and drop NUL before relaying.
    Normalize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub address: SocketAddr,
    /// TLS from the first byte (RFC 8314, port 465).
    pub implicit_tls: bool,
    /// The load balancers that connect here and send a PROXY protocol header (v1 or v2) naming
    /// the real client. Empty: a plain listener. Otherwise every connection must come from
    /// one of these networks and start with a header; the client is the one it names.
    pub proxy_from: Vec<ipnet::IpNet>,
}

impl Listener {
    /// Does this listener expect a PROXY header?
    pub fn is_proxied(&self) -> bool {
        !self.proxy_from.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub connections: u32,
    pub connections_per_ip: u32,
    /// Transactions (MAIL to the end of DATA) open at once from one client address (IPv6: /64).
    pub transfers_per_ip: u32,
    pub message_size: u64,
    pub recipients: u32,
    pub line_length: u32,
    /// Protocol or policy errors before the session is closed with 421 (Postfix's
    /// `smtpd_hard_error_limit`).
    pub errors: u32,
    /// Errors after which each further negative reply waits a growing, bounded delay (Postfix's
    /// `smtpd_soft_error_limit`).
    pub soft_errors: u32,
    pub timeouts: Timeouts,
}

/// Seconds allowed per stage. Each bounds the whole stage, so a client trickling one byte at a time
/// cannot stretch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Waiting for a command (HELO, MAIL, RCPT, RSET…).
    pub command: u32,
    /// Receiving the whole DATA payload.
    pub data: u32,
    /// Waiting for the back end (each reply).
    pub relay: u32,
    /// How long the last line of the greeting waits to catch early talkers (0 = no pregreet
    /// test).
    pub pregreet: u32,
}

/// postscreen's tests, done by the node itself (docs/policy.md `screen`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screen {
    /// Seconds a client that passed the pregreet test is greeted at once (0: never remembered).
    pub pregreet_remember: u32,
    /// What an early talker gets.
    pub pregreet_talker: TalkerAction,
    /// The reply to input sent before a reply it had to wait for (RFC 2920); `None`: not checked.
    pub pipelining: Option<Reply>,
    /// Shorter limits while the farm is near its connection limit; `None`: never.
    pub stress: Option<Stress>,
}

/// What a client that talked before the greeting gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TalkerAction {
    /// `554 5.5.1` and the connection is closed at once.
    Close,
    /// It is greeted, and every RCPT is refused (postscreen's `postscreen_greet_action = enforce`).
    RefuseRecipients,
}

/// The limits a session gets when it starts while its farm is under stress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stress {
    /// The share of `limits { connections }` (percent) at which the farm is under stress.
    pub percent: u8,
    pub command_timeout: u32,
    pub data_timeout: u32,
    pub errors: u32,
}

/// One entry of a client access list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessAction {
    /// Trusted: anti-spam checks are skipped (relay control is not).
    Accept,
    Reject(Reply),
    Defer(Reply),
}

/// An SMTP reply the policy decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463), e.g. `5.7.1`.
    pub status: String,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: &str, text: &str) -> Reply {
        Reply { code, status: status.to_owned(), text: text.to_owned() }
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// What a client refused by the `connect` stage with this reply is told instead of the
    /// greeting. RFC 5321 4.3.2 allows only 220, 554 or 421 there: a deferral becomes
    /// `421 4.7.0` (and the connection closes), a refusal `554 5.7.1` (then 503 to every command
    /// but QUIT, 3.1); the host name leads the policy's text either way. The node and
    /// `mtac explain` both show this reply, so they cannot differ at connect.
    pub fn as_greeting(&self, hostname: &str) -> Reply {
        let text = format!("{hostname} {}", self.text);
        if self.is_permanent() {
            Reply::new(554, "5.7.1", &text)
        } else {
            Reply::new(421, "4.7.0", &text)
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.code, self.status, self.text)
    }
}

/// The SMTP stages at which the policy decides. Names match docs/session.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    /// After the message's final dot: the node's own steps on the message's verdicts (DMARC);
    /// no check the policy moves with `stage=` may go here.
    Data,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt, Stage::Data];
    /// The stages a check may be moved to with `stage=`: the commands before the message.
    pub const COMMANDS: [Stage; 4] = [Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s)
    }
}

/// The decision program: at each stage, the steps in order. The first step that decides wins.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub connect: Vec<Step>,
    pub helo: Vec<Step>,
    pub mail: Vec<Step>,
    pub rcpt: Vec<Step>,
    pub data: Vec<Step>,
}

impl Program {
    pub fn stage(&self, stage: Stage) -> &[Step] {
        match stage {
            Stage::Connect => &self.connect,
            Stage::Helo => &self.helo,
            Stage::Mail => &self.mail,
            Stage::Rcpt => &self.rcpt,
            Stage::Data => &self.data,
        }
    }

    pub fn stage_mut(&mut self, stage: Stage) -> &mut Vec<Step> {
        match stage {
            Stage::Connect => &mut self.connect,
            Stage::Helo => &mut self.helo,
            Stage::Mail => &mut self.mail,
            Stage::Rcpt => &mut self.rcpt,
            Stage::Data => &mut self.data,
        }
    }
}

/// One rule of the program: a check and the reply when it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Stable rule name used in logs, metrics and `mtac explain`, e.g. `helo.fqdn`.
    pub rule: String,
    pub check: Check,
    /// The reply when the check fails (access lists carry their own per entry).
    pub reply: Reply,
    /// `shadow`: the step is evaluated and what it would refuse is reported
    /// ([`crate::eval::Decision::shadowed`]), never enforced.
    pub shadow: bool,
}

/// What a step checks. Anti-spam checks are skipped for trusted clients, authenticated sessions
/// and role-account recipients; safety checks (relay control, syntax) never are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// Client access list: accept (trust), reject or defer by longest prefix.
    Access,
    /// DNSBL/DNSWL score at or above the threshold.
    Dnsbl,
    /// A HELO/EHLO was given before MAIL.
    HeloRequired,
    /// The HELO argument is a syntactically valid host name or address literal.
    HeloSyntax,
    /// The HELO name is a fully qualified domain name (or an address literal).
    HeloFqdn,
    /// The HELO name is not our host name, one of our local domains, or one of our addresses.
    HeloNotOurs { names: Vec<String> },
    /// The sender's domain is fully qualified.
    SenderFqdn,
    /// The sender (address or domain) is not in a deny table.
    SenderDeny { domains: Option<TableId>, addresses: Option<TableId> },
    /// The sender's domain resolves (MX, A or AAAA; null MX refused).
    SenderResolvable,
    /// The recipient's domain is fully qualified.
    RecipientFqdn,
    /// The recipient is in a local domain, or the client may relay. Always present in inbound farms.
    RelayControl,
    /// The recipient is a known address (or a role account) of its local domain.
    RecipientKnown,
    /// The recipient is a role account: accept now, skipping the anti-spam steps after this one.
    RoleAccount,
    /// Greylisting (state kept by the runtime).
    Greylist,
    /// Submission farms: the session must be authenticated.
    AuthRequired,
    /// The client's address has a reverse DNS name (forward-confirmed when `confirmed`).
    ClientReverseDns { confirmed: bool },
    /// The HELO name exists in DNS (A, AAAA or MX), like Postfix's reject_unknown_helo_hostname.
    HeloResolvable,
    /// A recipient of a local domain that the compiled table does not list exists in the
    /// farm's directory (LDAP, asked by the runtime; cached).
    RecipientDirectory,
    /// SPF of MAIL FROM (the verdict comes from the runtime's check, or from `--spf`).
    Spf,
    /// DMARC after DATA, from the message's verdicts (the runtime's, or `--dmarc`).
    Dmarc,
}

impl Check {
    /// Whether a trusted client (access accept, DNSWL, AUTH) or a role account skips this step.
    pub fn is_antispam(&self) -> bool {
        matches!(
            self,
            Check::Dnsbl
                | Check::HeloSyntax
                | Check::HeloFqdn
                | Check::HeloNotOurs { .. }
                | Check::SenderFqdn
                | Check::SenderDeny { .. }
                | Check::SenderResolvable
                | Check::Greylist
                | Check::ClientReverseDns { .. }
                | Check::HeloResolvable
                | Check::Spf
                | Check::Dmarc
        )
    }
}

/// DNSBL/DNSWL scoring like Postfix's postscreen_dnsbl_sites.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dnsbl {
    pub threshold: i32,
    /// A score at or below this makes the client trusted (DNSWL), like postscreen_dnsbl_whitelist_threshold.
    pub allow_threshold: Option<i32>,
    pub zones: Vec<DnsblZone>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsblZone {
    pub zone: String,
    /// What the zone is queried for.
    pub target: DnsblTarget,
    /// Weights by answer; an answer that matches none of them is a zone error, never a listing.
    pub answers: Vec<DnsblAnswer>,
    /// `verified=#true` on a `sender-domain` zone: its negative weights (an allow-list's) count
    /// only when SPF passed for MAIL FROM's domain; its positive weights always count.
    pub verified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsblTarget {
    ClientIp,
    HeloName,
    SenderDomain,
}

/// `127.0.0.x` filter: the answer matches when each octet lies in its inclusive range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsblAnswer {
    pub octets: [(u8, u8); 4],
    pub weight: i32,
}

impl DnsblAnswer {
    pub fn matches(&self, ip: std::net::Ipv4Addr) -> bool {
        self.octets.iter().zip(ip.octets()).all(|(&(lo, hi), o)| lo <= o && o <= hi)
    }
}

/// Ban the client after one of these rules rejected it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRule {
    /// Rule names (as in [`Step::rule`]) whose reject triggers the ban.
    pub after: Vec<String>,
    pub seconds: u32,
    /// Prefix length the ban covers for IPv4 and IPv6 (32/128 = the address alone).
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    /// Which farms the ban turns the client away from.
    pub scope: BanScope,
}

/// Which farms a ban holds for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BanScope {
    /// Only the farm whose rule earned it (the default): a client refused on the submission farm
    /// may still deliver to the MX farm — a partner's MTA behind the same NAT as a guesser.
    Farm,
    /// Every farm of the node (and of the nodes sharing its Redis).
    AllFarms,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greylist {
    /// What stands for the client in the triplet.
    pub key: GreylistKey,
    pub delay: u32,
    pub retry_window: u32,
    pub lifetime: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub auto_whitelist: u32,
    pub whitelist_clients: Option<TableId>,
    /// Sender domains exempt from greylisting. An entry's value is [`VERIFIED_SENDER`] when it
    /// is honoured only for a sender whose SPF passed (`verified=#true`), 0 otherwise.
    pub whitelist_senders: Option<TableId>,
    pub whitelist_recipients: Option<TableId>,
    pub reply: Reply,
}

/// Rules on the message's structure (mail-parser), checked after DATA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MimeRules {
    /// File name extensions refused anywhere in an attachment's name (lower case, no dot):
    /// `invoice.pdf.exe` and `photo.exe.jpg` are both refused for `exe`.
    pub forbid_extensions: Vec<String>,
    /// MIME types refused (`type/subtype`, or `type/*`), lower case.
    pub forbid_types: Vec<String>,
    /// Header fields every message must carry (RFC 5322 requires Date and From).
    pub require_headers: Vec<String>,
    /// Refuse a From: in one of the farm's local domains from a client nothing vouches for.
    pub forged_local_sender: bool,
}

/// What stands for the client in a greylist triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GreylistKey {
    /// The client's network (`network`/`network6` prefixes).
    Network,
    /// The registrable domain of the client's forward-confirmed reverse DNS name, so a retry from
    /// any host of a sender's pool passes; the network when there is no confirmed name.
    Fcrdns,
    /// The registrable domain of MAIL FROM when SPF passed for it, so a retry from any address
    /// the domain's SPF record permits passes; the network otherwise (no pass, or `<>`).
    Spf,
}

/// The value of a `whitelist-sender-domain` entry written with `verified=#true`: it exempts a
/// sender only when SPF passed for MAIL FROM's domain, so typing the domain is not enough.
pub const VERIFIED_SENDER: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanner {
    pub kind: ScannerKind,
    /// `unix:/path`, `host:port` or an http URL for rspamd.
    pub address: String,
    pub timeout: u32,
    pub fail_open: bool,
    pub tag_score: Option<i32>,
    pub reject_score: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScannerKind {
    Clamav,
    Spamassassin,
    Rspamd,
}

/// An external filter the farm asks about each message after the scanners: a milter (the
/// Sendmail/Postfix protocol, version 6) or an HTTP hook (JSON, the MTA Hooks draft's shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub kind: FilterKind,
    /// The name logs, metrics and `--milter NAME=VERDICT` use (default: derived from the address).
    pub name: String,
    /// Milter: `inet:HOST:PORT`, `inet:PORT@HOST` or `unix:/PATH`; hook: an `http://` URL.
    pub address: String,
    /// Seconds to connect.
    pub connect_timeout: u32,
    /// Seconds for each answer.
    pub command_timeout: u32,
    /// Seconds for the whole conversation about one message.
    pub total_timeout: u32,
    /// `fail="open"`: a filter that cannot answer lets the message through (logged).
    pub fail_open: bool,
    /// `discard="accept"`: a milter's discard is answered 250 and the message dropped; by
    /// default it is refused (550), never a silent 250.
    pub discard_accepts: bool,
    /// `quarantine="header"`: a milter's quarantine becomes an `X-Quarantine` header on the
    /// relayed message; by default it refuses (550).
    pub quarantine_header: bool,
    /// `recipients="change"`: a milter may add and delete recipients (an added one must pass
    /// the farm's relay control); by default such a request defers the message (451).
    pub change_recipients: bool,
    /// Hooks: `ask-rcpt=#true` asks the hook about each recipient the policy accepted too (a
    /// milter is always asked at RCPT).
    pub ask_rcpt: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterKind {
    Milter,
    Hook,
}

/// Where accepted mail goes, while the sender waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Relay {
    /// Back ends tried in order (failover).
    Backends(Vec<Backend>),
    /// The embedded one-machine default: write to a maildir, fsync, then answer 250.
    Maildir(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub protocol: BackendProtocol,
    /// `host:port` as written in the policy (resolved by the runtime).
    pub address: String,
    /// STARTTLS toward this back end.
    pub tls: BackendTls,
}

/// `backend … tls=`: STARTTLS toward one back end (Postfix's `smtp_tls_security_level`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendTls {
    /// `tls="off"`: never STARTTLS (a back end whose TLS is known broken, or a socket on the
    /// same machine).
    Off,
    /// `tls="opportunistic"`, the default (Postfix's `may`): STARTTLS when the back end offers
    /// it, the certificate not verified (encryption against a passive listener); clear text when
    /// it does not offer it. A failed handshake fails that back end, never falls back to clear.
    Opportunistic,
    /// `tls="required"` (Postfix's `secure`): STARTTLS or no relay, the certificate verified
    /// against `ca` (a PEM file, absolute) or the system's roots, for `name`.
    Required { ca: Option<String>, name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendProtocol {
    Smtp,
    Lmtp,
}

/// `dkim-sign`: the keys an authenticated user's mail is signed with, by the domain of its
/// header From. The keys themselves are not in the ruleset: the node reads each file when it
/// loads the ruleset (as it reads the TLS key), so the ruleset stays a file that may be copied,
/// inspected and pushed without being a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimSign {
    /// One per signing domain, sorted by domain.
    pub keys: Vec<DkimSignKey>,
    /// The header fields to sign, in the signature's `h=` order; `From` appears twice (signed
    /// once more than it occurs, so a second From cannot be added without breaking it).
    pub headers: Vec<String>,
}

/// One signing key: `key "example.org" selector="s2026" file="keys/example.org.pem"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimSignKey {
    /// The signing domain (`d=`), lowercase, without a final dot.
    pub domain: String,
    /// The selector (`s=`): the key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The PEM file, absolute (resolved against the policy's directory when compiled).
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    pub certificate: String,
    pub key: String,
    /// STARTTLS must succeed before MAIL (always true on submission farms).
    pub required: bool,
    /// `name=`: the host name clients connect to, which `mtac check` checks the certificate
    /// against (`None`: the policy's hostname).
    pub name: Option<String>,
    /// Other certificates, chosen by the name the client asks for (SNI); the one above serves
    /// every other name and clients that ask for none.
    pub sni: Vec<SniCertificate>,
}

/// `tls { sni "NAME" certificate=… key=… }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniCertificate {
    /// Lower-cased; `*.example.com` covers one label under it.
    pub name: String,
    pub certificate: String,
    pub key: String,
}

/// Recipient validation against an LDAP directory.
///
/// The compiled address table is the fast path: a listed address never reaches the directory.
/// `mtac build --export-directory` fills that table from the directory at build time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Search base.
    pub base: String,
    /// RFC 4515 filter; `{address}` is replaced by the escaped recipient.
    pub filter: String,
    /// Attributes that hold addresses (what an export collects).
    pub attributes: Vec<String>,
    /// Bind as this DN before searching (anonymous when `None`).
    pub bind_dn: Option<String>,
    /// File holding the bind password, read by the node (the secret never enters the ruleset).
    pub bind_password_file: Option<String>,
    /// A whole lookup (connection, bind, search), milliseconds.
    pub timeout_ms: u32,
    /// Connections kept open to the directory (each serves one query at a time).
    pub pool: u32,
    /// Seconds an address found is remembered.
    pub positive_ttl: u32,
    /// Seconds an address not found is remembered.
    pub negative_ttl: u32,
    /// Addresses kept in each cache.
    pub cache_size: u32,
    /// Ask the directory at run time for addresses the table does not list. `false`: the table
    /// exported at build time is the whole truth, and a node never talks to LDAP.
    pub lookups: bool,
    /// Addresses `mtac build --export-directory` put into the farm's address table (0: none).
    pub exported: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    pub mechanisms: Vec<String>,
    pub backend: AuthBackend,
    /// Failed attempts before the client is banned.
    pub max_failures: u32,
    /// Seconds a successful login is remembered (0: every AUTH checks the password).
    pub cache_ttl: u32,
    /// Addresses a user may use as MAIL FROM besides their own: (user, address) pairs,
    /// lowercase, sorted (binary-searched at MAIL FROM).
    pub sender_aliases: Vec<(String, String)>,
    /// Every address in the message's From header must be one the user may send as (the same
    /// rule as MAIL FROM); a message without one is refused too.
    pub header_from_owned: bool,
    /// May an authenticated user send with the null reverse path `MAIL FROM:<>`?
    pub null_sender: bool,
    /// The runtime's memo of what checking an unknown user's password costs (the dearest hash
    /// of the table), worked out once per loaded ruleset. Not in the file: each load starts
    /// empty.
    #[serde(skip)]
    pub unknown_user_cost: std::sync::OnceLock<[u32; 4]>,
}

impl Auth {
    /// Has `user` been given `address` with `may-send-as`?
    pub fn may_send_as(&self, user: &str, address: &str) -> bool {
        let key = (user.to_ascii_lowercase(), address.to_ascii_lowercase());
        self.sender_aliases.binary_search(&key).is_ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthBackend {
    Ldap {
        url: String,
        bind_dn_template: String,
    },
    /// Users and password hashes (PHC strings) compiled in.
    Table(Vec<(String, String)>),
}

/// Helper for the prefix fields: is `ip` loopback (v4 or v6, mapped included)?
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}
