//! The connect phase: listening sockets, and the accept loop that turns a connection away or
//! gives it a session task — bans, the connection rate, the farm's and each client's
//! connection limits, in that order, each refusal one non-blocking write and a close.
//!
//! **Invariant:** every session task holds a [`Slot`] from accept to its end; dropping it gives
//! back the farm's and the client's connection slots, lowers `mtac_connections_active` and
//! drops the task's drain [`Guard`], so the limits, the gauge and the drain cannot disagree.

use super::drain::Guard;
use super::threads::Placement;
use crate::metrics::{FarmLabel, RefusedAtAccept};
use crate::shared::Shared;
use mtac_ruleset::model::{self, BanResponse, RateSubject};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use tokio::net::{TcpListener, TcpStream};

/// The listening socket of `address`, or the error a plain `bind` gives when something already
/// listens there. A deep backlog: a spam wave arrives as a burst of connects. One socket per
/// address, accepted on by session thread 0, which hands connections on ([`super::threads`]).
pub(super) fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket(address)?;
    socket.set_nonblocking(true)?;
    // Linux gives accepted sockets the listener's TCP_NODELAY: one setsockopt(2) here instead
    // of one per connection (`conn::serve` sets it itself elsewhere).
    socket.set_tcp_nodelay(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A TCP socket for `address`, `SO_REUSEADDR` (a restart does not wait for the last node's
/// connections in TIME_WAIT), IPv6 sockets IPv6 only.
fn socket(address: SocketAddr) -> std::io::Result<socket2::Socket> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Connection counts of one farm, shared by its listeners.
#[derive(Default)]
pub(super) struct FarmLimits {
    total: AtomicU32,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    stress: StressState,
}

/// Whether a farm is under stress: its open connections passed `screen { stress at= }` of its
/// connection limit. Moved at accept and when a session ends, so the gauge falls back as soon
/// as the farm does.
#[derive(Default)]
struct StressState {
    /// Connections above which the farm is under stress (0: no stress screen).
    above: AtomicU32,
    on: AtomicBool,
    /// The farm's `mtac_farm_under_stress` gauge and name, set by its first accept.
    gauge: OnceLock<(Gauge, String)>,
}

impl FarmLimits {
    /// Record `open` connections; whether the farm is under stress now. A change is logged and
    /// shown by the gauge.
    fn stressed(&self, open: u32) -> bool {
        let above = self.stress.above.load(Ordering::Relaxed);
        let now = above > 0 && open > above;
        if self.stress.on.swap(now, Ordering::Relaxed) != now {
            if let Some((gauge, farm)) = self.stress.gauge.get() {
                gauge.set(i64::from(now));
                if now {
                    tracing::warn!(
                        farm = farm.as_str(),
                        connections = open,
                        "farm under stress: new sessions get the stress limits"
                    );
                } else {
                    tracing::info!(farm = farm.as_str(), connections = open, "farm no longer under stress");
                }
            }
        }
        now
    }
}

/// Holds a farm connection slot, the client's per-IP slot (once the client is known) and a
/// drain guard; all are released on drop.
struct Slot {
    limits: Arc<FarmLimits>,
    ip: Option<IpAddr>,
    shared: Arc<Shared>,
    _drain: Guard,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.limits.total.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        self.limits.stressed(open);
        self.shared.metrics.connections_active.dec();
        if let Some(ip) = self.ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = map.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Refuse a connection cheaply: one non-blocking write and close, no task.
fn refuse(stream: TcpStream, text: &str) {
    let _ = stream.try_write(text.as_bytes());
}

/// One listener: what every connection it accepts shares.
struct Listening {
    farm: String,
    implicit_tls: bool,
    /// The balancers that may connect and must send a PROXY header; empty: clients connect
    /// directly.
    proxy_from: Vec<ipnet::IpNet>,
    limits: Arc<FarmLimits>,
    shared: Arc<Shared>,
    drain: Guard,
}

/// A connection past every check at accept, ready for its session.
struct Admitted {
    stream: TcpStream,
    /// The client: the TCP peer, or the one a PROXY header named.
    peer: SocketAddr,
    slot: Slot,
    admission: crate::conn::Admission,
    check_farm_rate: bool,
}

impl Listening {
    fn refused(&self, reason: &'static str) {
        let labels = RefusedAtAccept { farm: self.farm.clone(), reason };
        self.shared.metrics.refused_at_accept.get_or_create(&labels).inc();
    }

    /// Take one of the farm's `max_total` connection slots, or `None` when the farm is full.
    fn take_slot(&self, max_total: u32) -> Option<Slot> {
        if self.limits.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.limits.total.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        self.shared.metrics.connections_active.inc();
        Some(Slot { limits: self.limits.clone(), ip: None, shared: self.shared.clone(), _drain: self.drain.clone() })
    }

    /// The checks at accept, in order: bans, the connection rate, the farm's connection limit
    /// (unless `held` is the slot already taken for a PROXY header's wait) and the client's.
    /// `None`: refused, and already answered.
    fn admit(&self, stream: TcpStream, peer: SocketAddr, held: Option<Slot>) -> Option<Admitted> {
        let shared = &self.shared;
        let farm = &self.farm;
        let snapshot = shared.snapshot();
        let Some((_, farm_model)) = snapshot.farm(farm) else {
            refuse(stream, "421 4.3.2 Service not available\r\n");
            return None;
        };
        let ip = peer.ip();
        let mut banned = false;
        if shared.bans.is_banned(farm, ip, &farm_model.bans) {
            if let Some(count) = shared.ban_refusals.note(farm) {
                tracing::info!(farm = farm.as_str(), client = %ip, refused = count, "banned clients turned away (one line per farm every 10 s at most)");
            }
            match farm_model.ban_response {
                // On an implicit-TLS listener the client's first bytes are a TLS ClientHello: a
                // plain-text 521 is noise to it, and a handshake to say 521 inside TLS would spend
                // the CPU a ban is meant to save. Closing says "not now" as well.
                BanResponse::Close521 if self.implicit_tls => {
                    self.refused("ban");
                    drop(stream);
                    return None;
                }
                BanResponse::Close521 => {
                    self.refused("ban");
                    refuse(stream, "521 5.3.2 Client host rejected: banned for a while, do not retry now\r\n");
                    return None;
                }
                BanResponse::RefuseRecipients => banned = true,
            }
        }
        // With Redis the connection rate is the farm's, counted in the session's task (below) so
        // the accept loop never waits on the network.
        let farm_rates = matches!(shared.state, Some(crate::state::Store::Redis(_)));
        if !farm_rates {
            if let Some(limit) = shared.rates.count(farm, RateSubject::Connections, ip, &farm_model.rate_limits) {
                self.refused("rate");
                let reply = crate::session::policy_reply(&limit.reply);
                refuse(stream, &String::from_utf8_lossy(&reply.to_bytes()));
                return None;
            }
        }
        let check_farm_rate =
            farm_rates && farm_model.rate_limits.iter().any(|l| l.subject == RateSubject::Connections);
        let max_total = farm_model.limits.connections;
        let stress_above = farm_model.screen.stress.as_ref().map_or(0, |s| {
            let share = u64::from(max_total) * u64::from(s.percent) / 100;
            u32::try_from(share).unwrap_or(u32::MAX).max(1)
        });
        self.limits.stress.above.store(stress_above, Ordering::Relaxed);
        self.limits.stress.gauge.get_or_init(|| {
            (shared.metrics.under_stress.get_or_create_owned(&FarmLabel { farm: farm.clone() }), farm.clone())
        });
        let max_per_ip = farm_model.limits.connections_per_ip;
        let exempt = farm_model.trust_loopback && model::is_loopback(ip);
        drop(snapshot);
        let Some(mut slot) = held.or_else(|| self.take_slot(max_total)) else {
            self.refused("limit");
            refuse(stream, "421 4.7.0 Too many connections, try again later\r\n");
            return None;
        };
        // An IPv6 host owns a /64: count it as one client, as bans and rate limits do.
        if !exempt {
            let key = per_ip_key(ip);
            let mut map = self.limits.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = map.entry(key).or_insert(0);
            if *count >= max_per_ip {
                drop(map);
                drop(slot);
                self.refused("limit");
                refuse(stream, "421 4.7.0 Too many connections from your address, try again later\r\n");
                return None;
            }
            *count += 1;
            slot.ip = Some(key);
        }
        let stressed = self.limits.stressed(self.limits.total.load(Ordering::Relaxed));
        let admission = crate::conn::Admission { banned, stressed };
        Some(Admitted { stream, peer, slot, admission, check_farm_rate })
    }

    /// Start the session of an admitted connection in a task of its own, which holds its slot.
    fn start(self: &Arc<Self>, admitted: Admitted) {
        if admitted.check_farm_rate {
            // The Redis round trip runs in a task of its own, which starts the session's after
            // it: awaited inside the session's task, it would size every session's future.
            tokio::spawn(self.clone().rate_checked(admitted));
            return;
        }
        self.spawn_session(admitted.stream, admitted.peer, admitted.slot, admitted.admission);
    }

    fn spawn_session(&self, stream: TcpStream, peer: SocketAddr, slot: Slot, admission: crate::conn::Admission) {
        let id = self.shared.next_id();
        let shared = self.shared.clone();
        if let Some(session) =
            crate::conn::serve(stream, peer, &self.farm, self.implicit_tls, shared, id, admission, slot)
        {
            tokio::spawn(session);
        }
    }

    /// The farm's connection rate, counted in Redis before the session starts.
    async fn rate_checked(self: Arc<Self>, admitted: Admitted) {
        let Admitted { stream, peer, slot, admission, .. } = admitted;
        let shared = self.shared.clone();
        let snapshot = shared.snapshot();
        let limit = match snapshot.farm(&self.farm) {
            Some((_, model)) => crate::conn::rate_exceeded(&shared, model, RateSubject::Connections, peer.ip()).await,
            None => None,
        };
        drop(snapshot);
        if let Some(reply) = limit {
            self.refused("rate");
            let mut stream = stream;
            let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &reply.to_bytes()).await;
            return;
        }
        self.spawn_session(stream, peer, slot, admission);
    }

    /// An accepted connection, on the session thread that serves it: admitted (a direct
    /// client) or given a task that waits for the PROXY header (a balancer); anyone else on a
    /// PROXY listener is closed at once, unanswered: a greeting would tell a scanner the port is
    /// SMTP.
    fn connected(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        if self.proxy_from.is_empty() {
            if let Some(admitted) = self.admit(stream, peer, None) {
                self.start(admitted);
            }
            return;
        }
        if !self.proxy_from.iter().any(|net| net.contains(&peer.ip())) {
            self.refused("proxy-source");
            if let Some(count) = self.shared.proxy_refusals.note(&self.farm) {
                tracing::warn!(farm = self.farm.as_str(), peer = %peer.ip(), refused = count, "connection to a PROXY listener from outside its proxy-from closed (one line per farm every 10 s at most)");
            }
            return;
        }
        let max_total = self.shared.snapshot().farm(&self.farm).map_or(0, |(_, farm)| farm.limits.connections);
        let Some(slot) = self.take_slot(max_total) else {
            // Said to the balancer, which passes it on to its client.
            self.refused("limit");
            refuse(stream, "421 4.7.0 Too many connections, try again later\r\n");
            return;
        };
        tokio::spawn(self.clone().proxied(stream, peer, slot));
    }

    /// [`Listening::connected`] on another session thread: the connection taken off this
    /// thread's reactor (one epoll_ctl) and registered with that thread's, there, in a task of
    /// its own.
    fn hand_to(self: &Arc<Self>, thread: &tokio::runtime::Handle, stream: TcpStream, peer: SocketAddr) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand an accepted connection to another session thread");
                return;
            }
        };
        let listening = self.clone();
        thread.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => listening.connected(stream, peer),
                Err(error) => tracing::warn!(%error, "accepted connection: cannot register it"),
            }
        });
    }

    /// A connection on a PROXY listener, in its own task: the balancer's header names the
    /// client, who is then admitted like a direct one. The wait holds a farm connection slot,
    /// so headers that never come cannot pile up past the farm's `connections`.
    async fn proxied(self: Arc<Self>, mut stream: TcpStream, balancer: SocketAddr, slot: Slot) {
        let client = match crate::proxy::read_header(&mut stream).await {
            Ok(header) => header.client.map_or(balancer, normalize),
            Err(error) => {
                self.refused(error.reason());
                if let Some(count) = self.shared.proxy_refusals.note(&self.farm) {
                    tracing::warn!(farm = self.farm.as_str(), balancer = %balancer.ip(), %error, refused = count, "connection closed before its greeting: no valid PROXY header (one line per farm every 10 s at most)");
                }
                return;
            }
        };
        if let Some(admitted) = self.admit(stream, client, Some(slot)) {
            // A task of its own: this one's PROXY header wait would otherwise live on in it.
            self.start(admitted);
        }
    }
}

/// One listening socket of `farm`, on session thread 0: accept until the task is aborted, and
/// start each connection's work on the thread [`Placement`] picks; each session task holds a
/// clone of `drain`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    farm: String,
    spec: model::Listener,
    limits: Arc<FarmLimits>,
    shared: Arc<Shared>,
    drain: Guard,
    placement: Arc<Placement>,
) {
    let listening = Arc::new(Listening {
        farm,
        implicit_tls: spec.implicit_tls,
        proxy_from: spec.proxy_from,
        limits,
        shared,
        drain,
    });
    // Looked up on the first connection (so the series appears then, as it always did) and
    // kept: counting a connection is then one relaxed atomic increment.
    let mut accepted = None;
    let here = crate::shared::session_thread();
    loop {
        let shared = &listening.shared;
        let Some((stream, peer)) = crate::shared::accepted(listener.accept().await, "accept failed").await else {
            continue;
        };
        accepted
            .get_or_insert_with(|| {
                shared.metrics.connections.get_or_create_owned(&FarmLabel { farm: listening.farm.clone() })
            })
            .inc();
        let peer = normalize(peer);
        let thread = placement.place();
        match placement.handle(thread) {
            Some(handle) if thread != here => listening.hand_to(handle, stream, peer),
            _ => listening.connected(stream, peer),
        }
    }
}

/// The key of the per-IP connection count: the address, or its /64 for IPv6.
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) are IPv4 clients for every check and limit.
fn normalize(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{normalize, per_ip_key};
    use std::net::{IpAddr, SocketAddr};

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_client_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(per_ip_key(a), per_ip_key(b));
        assert_eq!(per_ip_key("192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:25".parse().unwrap();
        assert_eq!(normalize(mapped), "192.0.2.7:25".parse::<SocketAddr>().unwrap());
    }
}
