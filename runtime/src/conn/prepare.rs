//! Before a stage: what the mail, helo and rcpt phases wait for before the session decides a
//! command. The lookups a command brings start here (HELO name, sender domain) and those its
//! stage needs are awaited; at MAIL the message rate, the spool's room for the announced size and
//! the client's share of the transfers in flight are checked first, so a refused transaction
//! costs no lookup.

use crate::lookups::Lookups;
use crate::session::{Action, Session};
use crate::shared::Shared;
use crate::smtp::{EnhancedCode, Reply};
use mtac_ruleset::model::{Farm, RateSubject, Stage};
use mtac_ruleset::rules;

/// Before the session decides a command: start the lookups it brings (HELO name, sender domain),
/// wait for those its stage needs, and apply the message rate limit. `Some` answers the command.
pub(super) async fn prepare(
    command: &crate::smtp::Command,
    session: &mut Session,
    farm: &Farm,
    shared: &Shared,
    lookups: &mut Option<Box<Lookups>>,
    transfer: &mut Option<crate::transfers::TransferSlot>,
    hostname: &str,
) -> Option<Action> {
    use crate::smtp::{Command, ReversePath};
    let stage = match command {
        Command::Helo(name) | Command::Ehlo(name) => {
            if let Some(l) = lookups.as_mut() {
                session.dns_answered(l.helo(name));
            }
            Stage::Helo
        }
        Command::Mail(mail) => {
            if session.transaction().is_none() {
                if let Some(reply) = rate_exceeded(shared, farm, RateSubject::Messages, session.peer().ip()).await {
                    return Some(session.refuse(reply, rules::RATE_LIMIT));
                }
                // Room for the message, before a byte of it is sent (RFC 1870: 452 for a
                // temporary lack of storage), and this client's share of the transfers.
                if !shared.spool.has_room_for(mail.size.unwrap_or(0)) {
                    return Some(session.refuse(super::data::insufficient_storage(), rules::SPOOL_BUDGET));
                }
                if transfer.is_none() {
                    // A client's share is enforced when it matters: with the spool over half its
                    // budget. Before that, a big sender's parallel deliveries (Postfix opens up to
                    // 20 per destination) are never turned away for a limit nobody is short of.
                    let limit = if shared.spool.under_pressure() { farm.limits.transfers_per_ip } else { u32::MAX };
                    match shared.transfers.open(session.peer().ip(), limit) {
                        Some(slot) => *transfer = Some(slot),
                        None => {
                            let reply = Reply::new(
                                452,
                                EnhancedCode::new(4, 3, 1),
                                "Too many messages in flight from your address, try again later",
                            )
                            .unwrap_or_else(|_| super::data::insufficient_storage());
                            return Some(session.refuse(reply, rules::TRANSFERS_PER_IP));
                        }
                    }
                }
                if let Some(l) = lookups.as_mut() {
                    let domain = match &mail.from {
                        ReversePath::Null => None,
                        ReversePath::Mailbox(m) => Some(m.domain()),
                    };
                    session.dns_answered([l.sender(domain)]);
                    // SPF skips authenticated sessions, as the evaluator's anti-spam steps do.
                    if session.authenticated().is_none() {
                        let sender = match &mail.from {
                            ReversePath::Null => String::new(),
                            ReversePath::Mailbox(m) => m.to_string(),
                        };
                        let helo = session.helo().unwrap_or_default();
                        l.spf(session.peer().ip(), helo, hostname, &sender);
                    }
                }
            }
            Stage::Mail
        }
        Command::Rcpt(_) => Stage::Rcpt,
        _ => return None,
    };
    if let Some(l) = lookups.as_mut() {
        session.dns_answered(l.ready_for(stage, &shared.metrics).await);
    }
    None
}

/// Count one `subject` event from `ip` against the farm's rate limits: in Redis when the node
/// shares state through it (every node of the farm counts in the same windows), else in this
/// node's memory. Returns the reply of the first limit exceeded. Redis failing falls back to
/// the node's own count: a limit is never lifted because the store is down.
pub async fn rate_exceeded(shared: &Shared, farm: &Farm, subject: RateSubject, ip: std::net::IpAddr) -> Option<Reply> {
    if farm.rate_limits.iter().all(|l| l.subject != subject) {
        return None;
    }
    if let Some(crate::state::Store::Redis(redis)) = &shared.state {
        // Boxed: the Redis round trips are most of this future's size, which every command's
        // future would otherwise carry (and copy) whether the farm counts in Redis or not.
        return Box::pin(redis_rate_exceeded(shared, redis, farm, subject, ip)).await;
    }
    shared.rates.count(&farm.name, subject, ip, &farm.rate_limits).map(|l| crate::session::policy_reply(&l.reply))
}

/// [`rate_exceeded`] for a node sharing its counts through Redis.
async fn redis_rate_exceeded(
    shared: &Shared,
    redis: &crate::state::RedisStore,
    farm: &Farm,
    subject: RateSubject,
    ip: std::net::IpAddr,
) -> Option<Reply> {
    let mut exceeded = None;
    for (index, limit) in farm.rate_limits.iter().enumerate().filter(|(_, l)| l.subject == subject) {
        let key = crate::guard::rate_key(&farm.name, index, ip, limit);
        match redis.count_rate(&key, u64::from(limit.window)).await {
            Ok(count) if count > u64::from(limit.limit) => {
                exceeded.get_or_insert(limit);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "redis: rate counter unavailable; counting on this node");
                return shared
                    .rates
                    .count(&farm.name, subject, ip, &farm.rate_limits)
                    .map(|l| crate::session::policy_reply(&l.reply));
            }
        }
    }
    exceeded.map(|l| crate::session::policy_reply(&l.reply))
}
