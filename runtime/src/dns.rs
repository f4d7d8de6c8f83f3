//! DNS for policy checks: DNS lists (DNSBL/DNSWL, RHSBL), sender domains, reverse DNS, and the
//! health of every list zone.
//!
//! One [`Dns`] per node wraps a hickory [`TokioResolver`]: asynchronous, UDP with TCP for
//! truncated answers, and hickory's response cache, which keeps positive answers for their TTL
//! and negative ones (NXDOMAIN, NODATA) for the SOA minimum. The cache holds at most
//! [`DnsSettings::cache_size`] responses. Every query is bounded by [`DnsSettings::timeout`]
//! whatever the resolver does underneath, so a slow list costs a session at most that long.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mtac_runtime::dns::DnsError> {
//! use mtac_runtime::dns::{Dns, DnsSettings};
//! use mtac_ruleset::eval::ListAnswer;
//! let dns = Dns::new(&DnsSettings::default())?;
//! match dns.list_ip("zen.spamhaus.org", "192.0.2.99".parse().unwrap()).await {
//!     ListAnswer::Listed(codes) => println!("listed: {codes:?}"),
//!     ListAnswer::NotListed => println!("clean"),
//!     ListAnswer::Error => println!("no answer: counts as not listed"),
//! }
//! # Ok(()) }
//! ```
//!
//! ## Zone health: why an answer is not always a listing
//! Spamhaus answers `127.255.255.252`, `.254` or `.255` when it refuses a query (through a public
//! resolver, or over quota), and some ISP resolvers answer NXDOMAIN with the address of a web
//! page. Mail servers that counted any A record as a listing (Haraka, mox) rejected all their
//! mail. Here an answer outside `127.0.0.0/8`, or inside `127.255.255.0/24`, is a **zone error**:
//! the query gives [`ListAnswer::Error`] (not listed) and the zone is suspended. Each zone is
//! also probed with its RFC 5782 test points ([`Dns::probe_zone`]) at start and periodically
//! ([`Dns::spawn_probes`]); a zone that answers them wrongly is suspended with an `error!` log
//! line until a probe passes again. A suspended zone is not queried at all.
//!
//! **Invariant:** a DNS failure (timeout, SERVFAIL, REFUSED, a suspended or broken zone) is never
//! a listing: it is [`ListAnswer::Error`], which the evaluator counts as not listed.
//!
//! Quirks: queries are always fully qualified (no search domains, no `/etc/hosts`); an empty
//! nameserver list reads `/etc/resolv.conf`, which a scratch container does not have, so nodes
//! there must name their resolvers. A DNSBL must be asked through a resolver the list accepts
//! (usually your own recursive resolver, not 8.8.8.8): that is what the probes detect.

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::system_conf::read_system_conf;
use hickory_resolver::TokioResolver;
use mtac_ruleset::eval::{DomainStatus, ListAnswer};
use mtac_ruleset::model::DnsblTarget;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How the node resolves: validated once from the policy, then handed to [`Dns::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Recursive resolvers to ask (UDP, then TCP for truncated answers). Empty: the system's
    /// `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// The longest one query may take, retries included. Past it the answer is an error.
    pub timeout: Duration,
    /// Responses kept in the cache (each is one name and type).
    pub cache_size: usize,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings { nameservers: Vec::new(), timeout: Duration::from_secs(5), cache_size: 32_768 }
    }
}

/// Why the DNS layer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No nameservers were given and the system configuration could not be read. Name the
    /// resolvers in the policy (a container image usually has no `/etc/resolv.conf`).
    #[error("cannot read the system DNS configuration ({0}); name the nameservers in the policy")]
    SystemConfig(NetError),
    /// The system configuration lists no nameserver. Name the resolvers in the policy.
    #[error("the system DNS configuration lists no nameserver; name the nameservers in the policy")]
    NoNameservers,
    /// A timeout of zero would make every query fail. Give a timeout of at least a few hundred
    /// milliseconds.
    #[error("the DNS timeout must be greater than zero")]
    ZeroTimeout,
    /// hickory refused the configuration.
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(NetError),
}

/// Reverse DNS of a client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reverse {
    /// This PTR name resolves (A/AAAA) back to the address: forward-confirmed (FCrDNS).
    Confirmed(String),
    /// The address has this PTR name (the first one), but none of its names resolves back.
    Unconfirmed(String),
    /// No PTR record (NXDOMAIN or NODATA).
    None,
    /// A lookup timed out or failed; nothing can be concluded.
    TempFail,
}

/// The result of probing a zone with its RFC 5782 test points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneHealth {
    /// The listed test point is listed with a proper code; the unlisted one is not listed.
    Healthy,
    /// The listed test point (127.0.0.2, or `test` for a domain list) is not listed: the zone
    /// (or the resolver) gives no listings at all.
    TestPointNotListed,
    /// The unlisted test point (127.0.0.1, or `invalid`) is listed: the zone would list everyone.
    NegativeTestPointListed(Vec<Ipv4Addr>),
    /// Answers outside 127.0.0.0/8 or in 127.255.255.0/24: the list refuses our resolver (the
    /// Spamhaus "public resolver" answer) or the resolver rewrites NXDOMAIN.
    BadAnswer(Vec<Ipv4Addr>),
    /// The probe timed out or got SERVFAIL/REFUSED: no verdict on the zone's answers.
    Unreachable,
}

impl ZoneHealth {
    /// Does this result suspend the zone? An unreachable zone is not suspended: its queries
    /// fail on their own (as errors), and one lost probe must not switch a list off.
    pub fn suspends(&self) -> bool {
        !matches!(self, ZoneHealth::Healthy | ZoneHealth::Unreachable)
    }
}

/// What the node knows of one zone's health.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneState {
    /// Queries are not sent; every answer is [`ListAnswer::Error`].
    pub suspended: bool,
    /// The last probe's result, if any.
    pub last_probe: Option<ZoneHealth>,
    /// When it was probed last.
    pub probed_at: Option<Instant>,
    /// Live queries answered with a zone error (127.255.255.x, outside 127/8) since start.
    pub bad_answers: u64,
}

/// Per-zone health, shared by every query (a std mutex held for a map lookup only).
#[derive(Debug, Default)]
pub struct ZoneMonitor {
    zones: Mutex<HashMap<String, ZoneState>>,
}

impl ZoneMonitor {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ZoneState>> {
        // A panic while holding the lock cannot leave the map inconsistent (each update is one
        // field store), so a poisoned lock is still usable.
        self.zones.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Is `zone` suspended (its queries answer [`ListAnswer::Error`] without being sent)?
    pub fn is_suspended(&self, zone: &str) -> bool {
        let zone = zone_key(zone);
        self.lock().get(zone.as_ref()).is_some_and(|s| s.suspended)
    }

    /// The state of every zone seen so far, sorted by name (for metrics and status output).
    pub fn snapshot(&self) -> Vec<(String, ZoneState)> {
        let mut all: Vec<_> = self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Record a probe result; logs when the zone starts failing and when it recovers.
    pub fn record_probe(&self, zone: &str, health: ZoneHealth) {
        let key = zone_key(zone).into_owned();
        let mut zones = self.lock();
        let state = zones.entry(key).or_default();
        let was = state.suspended;
        match &health {
            ZoneHealth::Healthy => state.suspended = false,
            ZoneHealth::Unreachable => {}
            _ => state.suspended = true,
        }
        match (was, state.suspended) {
            (false, true) => tracing::error!(
                zone,
                health = ?health,
                "DNS list zone fails its test points: SUSPENDED, its queries count as not listed \
                 (is the resolver one the list accepts?)"
            ),
            (true, false) => tracing::info!(zone, "DNS list zone answers its test points again: resumed"),
            _ if health == ZoneHealth::Unreachable => {
                tracing::warn!(zone, "DNS list zone probe got no answer (timeout or SERVFAIL)")
            }
            _ => {}
        }
        state.last_probe = Some(health);
        state.probed_at = Some(Instant::now());
    }

    /// A live query got a zone error: count it and suspend the zone until a probe passes.
    fn record_bad_answer(&self, zone: &str, answers: &[Ipv4Addr]) {
        let key = zone_key(zone).into_owned();
        let mut zones = self.lock();
        let state = zones.entry(key).or_default();
        state.bad_answers = state.bad_answers.saturating_add(1);
        if !state.suspended {
            state.suspended = true;
            tracing::error!(
                zone,
                ?answers,
                "DNS list zone gave an answer outside its codes (127.255.255.x or not 127/8): \
                 SUSPENDED until its test points answer right; its queries count as not listed"
            );
        }
    }
}

/// The node's DNS: cheap to clone (one shared resolver, cache and zone monitor).
#[derive(Clone)]
pub struct Dns {
    resolver: TokioResolver,
    timeout: Duration,
    zones: Arc<ZoneMonitor>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// What one list query found, before zone health turns it into a [`ListAnswer`].
enum Raw {
    Listed(Vec<Ipv4Addr>),
    NotListed,
    /// Undocumented answers: a zone error.
    Bad(Vec<Ipv4Addr>),
    Failed,
}

/// The outcome of one lookup, with the negative cases told apart.
enum Outcome<T> {
    Found(T),
    /// NXDOMAIN.
    NxDomain,
    /// The name exists with no record of this type.
    NoData,
    Failed,
}

/// At most this many PTR names are checked forward (Postfix and others stop early too).
const MAX_PTR_NAMES: usize = 4;

impl Dns {
    /// Build the resolver. Needs no runtime; queries must run on a tokio runtime.
    pub fn new(settings: &DnsSettings) -> Result<Dns, DnsError> {
        if settings.timeout.is_zero() {
            return Err(DnsError::ZeroTimeout);
        }
        let config = if settings.nameservers.is_empty() {
            // The system's servers, but none of its options: ours follow.
            let (config, _) = read_system_conf().map_err(DnsError::SystemConfig)?;
            if config.name_servers().is_empty() {
                return Err(DnsError::NoNameservers);
            }
            config
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for conn in &mut ns.connections {
                        conn.port = addr.port();
                    }
                    ns
                })
                .collect();
            ResolverConfig::from_parts(None, Vec::new(), servers)
        };
        let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let opts = builder.options_mut();
        // Per attempt; `query` also bounds the whole lookup by the same timeout, so a second
        // attempt only happens after a quick failure (a refused connection, say).
        opts.timeout = settings.timeout;
        opts.attempts = 2;
        opts.cache_size = u64::try_from(settings.cache_size).unwrap_or(u64::MAX);
        opts.ndots = 0;
        opts.use_hosts_file = ResolveHosts::Never;
        opts.preserve_intermediates = false;
        let resolver = builder.build().map_err(DnsError::Resolver)?;
        Ok(Dns { resolver, timeout: settings.timeout, zones: Arc::new(ZoneMonitor::default()) })
    }

    /// The zones' health, shared with every clone of this `Dns`.
    /// The shared resolver (and its cache), for the sender authentication checks.
    pub fn resolver(&self) -> &TokioResolver {
        &self.resolver
    }

    /// The longest one query (or one sender authentication check) may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn zones(&self) -> &Arc<ZoneMonitor> {
        &self.zones
    }

    /// DNSBL/DNSWL query for `ip` under `zone` (IPv4 reversed octets, IPv6 reversed nibbles;
    /// an IPv4-mapped IPv6 address is asked as IPv4). `Listed` carries the 127.x.y.z answers;
    /// `NotListed` on NXDOMAIN/NODATA; `Error` on timeout, SERVFAIL, REFUSED, a suspended zone,
    /// or a zone error (any answer outside 127.0.0.0/8 or in 127.255.255.0/24).
    pub async fn list_ip(&self, zone: &str, ip: IpAddr) -> ListAnswer {
        self.list(zone, &reversed(ip)).await
    }

    /// RHSBL/DBL query for a domain name (a HELO name, a sender domain) under `zone`. Answers
    /// as [`Dns::list_ip`]. An empty or malformed name is an error, never a listing.
    pub async fn list_name(&self, zone: &str, name: &str) -> ListAnswer {
        let name = name.trim_end_matches('.');
        if name.is_empty() || name.starts_with('[') {
            return ListAnswer::Error;
        }
        self.list(zone, name).await
    }

    /// The evaluator's view of one zone: the client IP, the HELO name or the sender domain.
    /// `None` when the target is not known yet (no HELO, null sender).
    pub async fn list_target(
        &self,
        zone: &str,
        target: DnsblTarget,
        ip: IpAddr,
        helo: Option<&str>,
        sender_domain: Option<&str>,
    ) -> Option<ListAnswer> {
        match target {
            DnsblTarget::ClientIp => Some(self.list_ip(zone, ip).await),
            DnsblTarget::HeloName => Some(self.list_name(zone, helo?).await),
            DnsblTarget::SenderDomain => Some(self.list_name(zone, sender_domain?).await),
        }
    }

    async fn list(&self, zone: &str, label: &str) -> ListAnswer {
        if self.zones.is_suspended(zone) {
            return ListAnswer::Error;
        }
        match self.query_list(zone, label).await {
            Raw::Listed(codes) => ListAnswer::Listed(codes),
            Raw::NotListed => ListAnswer::NotListed,
            Raw::Failed => ListAnswer::Error,
            Raw::Bad(codes) => {
                self.zones.record_bad_answer(zone, &codes);
                ListAnswer::Error
            }
        }
    }

    /// One list query, with no regard to the zone's health.
    async fn query_list(&self, zone: &str, label: &str) -> Raw {
        let zone = zone.trim_end_matches('.');
        let mut fqdn = String::with_capacity(label.len() + zone.len() + 2);
        fqdn.push_str(label);
        fqdn.push('.');
        fqdn.push_str(zone);
        fqdn.push('.');
        let Ok(name) = Name::from_utf8(&fqdn) else { return Raw::Failed };
        match self.lookup(name, RecordType::A).await {
            Outcome::Found(records) => {
                let codes: Vec<Ipv4Addr> = records
                    .iter()
                    .filter_map(|r| match r {
                        RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect();
                if codes.is_empty() {
                    Raw::NotListed
                } else if codes.iter().all(|a| is_list_code(*a)) {
                    Raw::Listed(codes)
                } else {
                    Raw::Bad(codes)
                }
            }
            Outcome::NxDomain | Outcome::NoData => Raw::NotListed,
            Outcome::Failed => Raw::Failed,
        }
    }

    /// Can `domain` receive mail, as Postfix's `reject_unknown_sender_domain` asks? `Resolves`
    /// if it has a (non-null) MX, or no MX but an A/AAAA record; `NullMx` if its only MX is the
    /// RFC 7505 null MX (`MX 0 .`), whatever A records it has; `NoRecords` on NXDOMAIN or when
    /// it has neither; `TempFail` on timeouts and SERVFAIL. An address literal (`[192.0.2.1]`)
    /// has nothing to look up and `Resolves`; a malformed name has `NoRecords`.
    pub async fn sender_domain(&self, domain: &str) -> DomainStatus {
        let domain = domain.trim_end_matches('.');
        if domain.starts_with('[') {
            return DomainStatus::Resolves;
        }
        let Some(name) = fqdn_name(domain) else { return DomainStatus::NoRecords };
        match self.lookup(name.clone(), RecordType::MX).await {
            Outcome::Found(records) => {
                let mut null = false;
                let mut real = false;
                for r in &records {
                    if let RData::MX(mx) = r {
                        if mx.exchange.is_root() {
                            null = true;
                        } else {
                            real = true;
                        }
                    }
                }
                // A null MX beside real ones is a configuration mistake; the real ones win.
                match (real, null) {
                    (true, _) => return DomainStatus::Resolves,
                    (false, true) => return DomainStatus::NullMx,
                    // Only a CNAME came back: fall through to the address lookups.
                    (false, false) => {}
                }
            }
            Outcome::NxDomain => return DomainStatus::NoRecords,
            Outcome::NoData => {}
            Outcome::Failed => return DomainStatus::TempFail,
        }
        let (a, aaaa) = tokio::join!(self.lookup(name.clone(), RecordType::A), self.lookup(name, RecordType::AAAA));
        match (a, aaaa) {
            (Outcome::Found(_), _) | (_, Outcome::Found(_)) => DomainStatus::Resolves,
            (Outcome::Failed, _) | (_, Outcome::Failed) => DomainStatus::TempFail,
            _ => DomainStatus::NoRecords,
        }
    }

    /// Reverse DNS of `ip`: its PTR names, and whether one of them (the first
    /// few) resolves forward (A for IPv4, AAAA for IPv6) back to `ip`. Takes at most two query
    /// timeouts (the PTR lookup, then the forward lookups together).
    pub async fn reverse(&self, ip: IpAddr) -> Reverse {
        let ip = canonical(ip);
        let suffix = if ip.is_ipv4() { "in-addr.arpa." } else { "ip6.arpa." };
        let Ok(ptr) = Name::from_ascii(format!("{}.{suffix}", reversed(ip))) else { return Reverse::TempFail };
        let names: Vec<Name> = match self.lookup(ptr, RecordType::PTR).await {
            Outcome::Found(records) => records
                .into_iter()
                .filter_map(|r| match r {
                    RData::PTR(p) => Some(p.0),
                    _ => None,
                })
                .collect(),
            Outcome::NxDomain | Outcome::NoData => return Reverse::None,
            Outcome::Failed => return Reverse::TempFail,
        };
        let Some(first) = names.first() else { return Reverse::None };
        let first = display_name(first);
        let kind = if ip.is_ipv4() { RecordType::A } else { RecordType::AAAA };
        let mut failed = false;
        let forward = async {
            for name in names.into_iter().take(MAX_PTR_NAMES) {
                match self.lookup(name.clone(), kind).await {
                    Outcome::Found(records) => {
                        let back = records.iter().any(|r| match r {
                            RData::A(a) => IpAddr::V4(a.0) == ip,
                            RData::AAAA(a) => IpAddr::V6(a.0) == ip,
                            _ => false,
                        });
                        if back {
                            return Some(display_name(&name));
                        }
                    }
                    Outcome::NxDomain | Outcome::NoData => {}
                    Outcome::Failed => failed = true,
                }
            }
            None
        };
        match tokio::time::timeout(self.timeout, forward).await {
            Ok(Some(name)) => Reverse::Confirmed(name),
            Ok(None) if !failed => Reverse::Unconfirmed(first),
            _ => Reverse::TempFail,
        }
    }

    /// Probe `zone` with its RFC 5782 test points: for an IP list, 127.0.0.2 must be listed
    /// with a code in 127.0.0.0/8 outside 127.255.255.0/24, and 127.0.0.1 must not be listed;
    /// for a domain list (`domain = true`), `test` and `invalid`. Queries even a suspended zone.
    pub async fn probe(&self, zone: &str, domain: bool) -> ZoneHealth {
        let (listed, unlisted) = if domain {
            (Cow::Borrowed("test"), Cow::Borrowed("invalid"))
        } else {
            let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
            let one = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
            (Cow::Owned(reversed(two)), Cow::Owned(reversed(one)))
        };
        let (positive, negative) = tokio::join!(self.query_list(zone, &listed), self.query_list(zone, &unlisted));
        match (positive, negative) {
            (Raw::Bad(codes), _) | (_, Raw::Bad(codes)) => ZoneHealth::BadAnswer(codes),
            (_, Raw::Listed(codes)) => ZoneHealth::NegativeTestPointListed(codes),
            (Raw::Failed, _) | (_, Raw::Failed) => ZoneHealth::Unreachable,
            (Raw::NotListed, _) => ZoneHealth::TestPointNotListed,
            (Raw::Listed(_), Raw::NotListed) => ZoneHealth::Healthy,
        }
    }

    /// [`Dns::probe`] for an IP list (DNSBL/DNSWL): the 127.0.0.2 / 127.0.0.1 test points.
    pub async fn probe_zone(&self, zone: &str) -> ZoneHealth {
        self.probe(zone, false).await
    }

    /// Probe the zones that `current` names (with their probe interval) now and then every
    /// interval, recording the results in [`Dns::zones`] (which logs failures with `error!` and
    /// recoveries with `info!`). Abort the handle to stop. Domain lists (HELO name, sender
    /// domain targets) are probed with `test`/`invalid`.
    ///
    /// `current` is asked again every second, so a reload that adds a zone has it probed within
    /// a second, a zone that is gone is no longer probed, and a new interval applies at once.
    pub fn spawn_probes(
        &self,
        current: impl Fn() -> (Vec<(String, DnsblTarget)>, Duration) + Send + 'static,
    ) -> JoinHandle<()> {
        let dns = self.clone();
        tokio::spawn(async move {
            let mut probed_at: HashMap<String, tokio::time::Instant> = HashMap::new();
            loop {
                let (zones, every) = current();
                let every = every.max(Duration::from_secs(1));
                probed_at.retain(|zone, _| zones.iter().any(|(z, _)| z == zone));
                for (zone, target) in &zones {
                    if probed_at.get(zone).is_some_and(|at| at.elapsed() < every) {
                        continue;
                    }
                    let health = dns.probe(zone, target != &DnsblTarget::ClientIp).await;
                    dns.zones.record_probe(zone, health);
                    probed_at.insert(zone.clone(), tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// One lookup, bounded by the timeout, with the negative answers told apart.
    async fn lookup(&self, name: Name, kind: RecordType) -> Outcome<Vec<RData>> {
        let lookup = self.resolver.lookup(name, kind);
        match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(found)) => {
                let records: Vec<RData> =
                    found.answers().iter().filter(|r| r.record_type() == kind).map(|r| r.data.clone()).collect();
                if records.is_empty() {
                    // Only CNAMEs, say: the name exists without this type.
                    Outcome::NoData
                } else {
                    Outcome::Found(records)
                }
            }
            Ok(Err(NetError::Dns(WireError::NoRecordsFound(none)))) => {
                if none.response_code == ResponseCode::NXDomain {
                    Outcome::NxDomain
                } else if none.soa.is_none() && none.ns.is_some() {
                    // A referral: the server asked is not a recursive resolver. Not an answer.
                    Outcome::Failed
                } else {
                    Outcome::NoData
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, ?kind, "DNS lookup failed");
                Outcome::Failed
            }
            Err(_) => Outcome::Failed,
        }
    }
}

/// 127.0.0.0/8 except 127.255.255.0/24: the only codes a list may answer (RFC 5782 2.1 and the
/// Spamhaus error codes).
fn is_list_code(a: Ipv4Addr) -> bool {
    let [first, second, third, _] = a.octets();
    first == 127 && !(second == 255 && third == 255)
}

/// IPv4-mapped IPv6 (`::ffff:192.0.2.1`, what a dual-stack socket reports) is IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The DNS list label of an address: `4.3.2.1` for 1.2.3.4, 32 reversed nibbles for IPv6.
pub fn reversed(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => nibbles(v6),
    }
}

fn nibbles(v6: Ipv6Addr) -> String {
    let mut out = String::with_capacity(63);
    for byte in v6.octets().iter().rev() {
        if !out.is_empty() {
            out.push('.');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{:x}.{:x}", byte & 0x0f, byte >> 4);
    }
    out
}

/// A domain as an absolute DNS name (IDNA for UTF-8), or `None` if it cannot be one.
fn fqdn_name(domain: &str) -> Option<Name> {
    if domain.is_empty() {
        return None;
    }
    let mut name = Name::from_utf8(domain).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// A name as logs and policy want it: lower case, no final dot.
fn display_name(name: &Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// Zone names as the monitor keys them: lower case, no final dot (allocates only if needed).
fn zone_key(zone: &str) -> Cow<'_, str> {
    let zone = zone.trim_end_matches('.');
    if zone.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(zone.to_ascii_lowercase())
    } else {
        Cow::Borrowed(zone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reversed_forms() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(reversed("::ffff:192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
        );
    }

    #[test]
    fn list_codes() {
        assert!(is_list_code(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(is_list_code(Ipv4Addr::new(127, 0, 1, 255)));
        assert!(!is_list_code(Ipv4Addr::new(127, 255, 255, 254)));
        assert!(!is_list_code(Ipv4Addr::new(192, 0, 2, 1)));
    }

    #[test]
    fn zone_keys() {
        assert_eq!(zone_key("Zen.Spamhaus.org."), "zen.spamhaus.org");
        assert!(matches!(zone_key("bl.test"), Cow::Borrowed(_)));
    }
}
