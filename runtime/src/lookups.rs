//! The DNS answers one session needs, started as early as possible and awaited only when a stage
//! needs them.
//!
//! The lookups about the client (DNS lists of its address, its reverse DNS) start at accept, in
//! parallel with the greeting, so they are ready by RCPT TO; those about the HELO name start at
//! HELO and those about the sender's domain at MAIL FROM. Before the evaluator runs a stage whose
//! steps need them, the driver awaits them (each query is bounded by the resolver's timeout) and
//! hands them to the session as [`DnsUpdate`]s (`Session::dns_answered`), which merges them into
//! the facts the evaluator reads. A failed lookup is an answer too (`Error`, `TempFail`), never
//! a refusal by itself.

use crate::dns::{Dns, Reverse};
use crate::metrics::{Metrics, ZoneLabel};
use crate::sender_auth::{SpfCheck, Verifier};
use crate::session::DnsUpdate;
use mtac_ruleset::eval::{DomainStatus, ListAnswer, ReverseDns};
use mtac_ruleset::model::{Check, DnsblTarget, Farm, GreylistKey, Stage};
use std::net::IpAddr;
use tokio::task::JoinHandle;

/// The SPF check a farm makes at MAIL FROM.
#[derive(Debug, Clone, Copy)]
struct SpfNeed {
    /// The `spf` step decides at MAIL FROM: the stage waits for the answer.
    at_mail: bool,
    /// Check the HELO identity too.
    helo: bool,
}

/// What a farm's program can ask of DNS, and at which stages.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    zones: Vec<(String, DnsblTarget)>,
    reverse: bool,
    sender_domain: bool,
    helo_name: bool,
    /// SPF at MAIL FROM: for the `spf` step, or for DMARC's SPF alignment after DATA.
    spf: Option<SpfNeed>,
    /// The farm's name, for the SPF verdicts' counts.
    farm: String,
    /// Messages are verified after DATA (DKIM, ARC, DMARC): no lookup here, but DNS is needed.
    verify_messages: bool,
    /// Per stage (connect, helo, mail, rcpt): (client, helo, sender) lookups needed.
    stages: [(bool, bool, bool); 4],
}

fn index(stage: Stage) -> usize {
    match stage {
        Stage::Connect => 0,
        Stage::Helo => 1,
        Stage::Mail => 2,
        Stage::Rcpt => 3,
        // Nothing DNS answers at the `data` stage waits in here: the message's checks make
        // their own queries (`sender_auth`).
        Stage::Data => 4,
    }
}

impl Needs {
    pub fn of(farm: &Farm) -> Needs {
        let zones: Vec<(String, DnsblTarget)> =
            farm.dnsbl.iter().flat_map(|d| &d.zones).map(|z| (z.zone.clone(), z.target)).collect();
        let mut needs = Needs { zones, farm: farm.name.clone(), ..Needs::default() };
        let has = |target: DnsblTarget| needs.zones.iter().any(|(_, t)| *t == target);
        let (client_zones, helo_zones, sender_zones) =
            (has(DnsblTarget::ClientIp), has(DnsblTarget::HeloName), has(DnsblTarget::SenderDomain));
        // Trust (a DNSWL allow-threshold) is computed at every stage from the DNS lists.
        let allow = farm.dnsbl.as_ref().is_some_and(|d| d.allow_threshold.is_some());
        for stage in Stage::ALL {
            let mut need = (allow && client_zones, allow && helo_zones, allow && sender_zones);
            for step in farm.program.stage(stage) {
                match step.check {
                    Check::Dnsbl => {
                        need.0 |= client_zones;
                        need.1 |= helo_zones;
                        need.2 |= sender_zones;
                    }
                    Check::ClientReverseDns { .. } => {
                        need.0 = true;
                        needs.reverse = true;
                    }
                    Check::SenderResolvable => {
                        need.2 = true;
                        needs.sender_domain = true;
                    }
                    Check::HeloResolvable => {
                        need.1 = true;
                        needs.helo_name = true;
                    }
                    // Keying greylist triplets by the client's confirmed reverse-DNS domain.
                    Check::Greylist if farm.greylist.as_ref().is_some_and(|g| g.key == GreylistKey::Fcrdns) => {
                        need.0 = true;
                        needs.reverse = true;
                    }
                    _ => {}
                }
            }
            if let Some(slot) = needs.stages.get_mut(index(stage)) {
                *slot = need;
            }
        }
        let auth = &farm.sender_auth;
        needs.verify_messages = auth.after_data();
        if auth.spf.is_some() || auth.dmarc.is_some() {
            needs.spf = Some(SpfNeed {
                at_mail: farm.program.mail.iter().any(|step| step.check == Check::Spf),
                helo: auth.spf.as_ref().is_some_and(|s| s.helo),
            });
        }
        needs
    }

    /// Whether anything here ever needs DNS.
    pub fn any(&self) -> bool {
        !self.zones.is_empty()
            || self.reverse
            || self.sender_domain
            || self.helo_name
            || self.spf.is_some()
            || self.verify_messages
    }

    fn zones_for(&self, target: DnsblTarget) -> Vec<String> {
        self.zones.iter().filter(|(_, t)| *t == target).map(|(z, _)| z.clone()).collect()
    }
}

type Lists = Vec<(String, ListAnswer)>;

/// The lookups of one session.
pub struct Lookups {
    dns: Dns,
    needs: Needs,
    client: Option<JoinHandle<(Lists, Option<ReverseDns>)>>,
    helo: Option<JoinHandle<(Lists, Option<DomainStatus>)>>,
    sender: Option<JoinHandle<(Lists, Option<DomainStatus>)>>,
    spf: Option<JoinHandle<SpfCheck>>,
    /// The current MAIL FROM's SPF check, once it answered: DATA writes it into
    /// Authentication-Results and DMARC aligns on it.
    spf_done: Option<SpfCheck>,
}

impl Drop for Lookups {
    fn drop(&mut self) {
        for handle in [self.client.take().map(|h| h.abort_handle()), self.helo.take().map(|h| h.abort_handle())]
            .into_iter()
            .flatten()
        {
            handle.abort();
        }
        if let Some(h) = self.sender.take() {
            h.abort();
        }
        if let Some(h) = self.spf.take() {
            h.abort();
        }
    }
}

/// Query every zone at once. The queries live in a `JoinSet`, so an aborted session aborts them.
async fn lists<F, Fut>(dns: &Dns, zones: Vec<String>, query: F) -> Lists
where
    F: Fn(Dns, String) -> Fut,
    Fut: std::future::Future<Output = ListAnswer> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (index, zone) in zones.iter().enumerate() {
        let answer = query(dns.clone(), zone.clone());
        set.spawn(async move { (index, answer.await) });
    }
    let mut answers = vec![ListAnswer::Error; zones.len()];
    while let Some(done) = set.join_next().await {
        if let Ok((index, answer)) = done {
            if let Some(slot) = answers.get_mut(index) {
                *slot = answer;
            }
        }
    }
    zones.into_iter().zip(answers).collect()
}

impl Lookups {
    /// Start the client's lookups now (at accept).
    pub fn start(dns: Dns, needs: Needs, client: IpAddr) -> Lookups {
        let zones = needs.zones_for(DnsblTarget::ClientIp);
        let reverse = needs.reverse;
        let client_task = (!zones.is_empty() || reverse).then(|| {
            let dns = dns.clone();
            tokio::spawn(async move {
                let reverse_task = reverse.then(|| {
                    let dns = dns.clone();
                    tokio::spawn(async move { dns.reverse(client).await })
                });
                let found = lists(&dns, zones, |dns, zone| async move { dns.list_ip(&zone, client).await }).await;
                let reverse = match reverse_task {
                    Some(task) => Some(match task.await {
                        Ok(Reverse::Confirmed(name)) => ReverseDns::Confirmed(name),
                        Ok(Reverse::Unconfirmed(name)) => ReverseDns::Unconfirmed(name),
                        Ok(Reverse::None) => ReverseDns::None,
                        Ok(Reverse::TempFail) | Err(_) => ReverseDns::TempFail,
                    }),
                    None => None,
                };
                (found, reverse)
            })
        });
        Lookups { dns, needs, client: client_task, helo: None, sender: None, spf: None, spf_done: None }
    }

    /// The HELO name changed: look the new one up. What the session knew of the old name no
    /// longer holds: the update says so (`None`: nothing is ever looked up about HELO names).
    pub fn helo(&mut self, name: &str) -> Option<DnsUpdate> {
        let zones = self.needs.zones_for(DnsblTarget::HeloName);
        let resolve = self.needs.helo_name;
        if zones.is_empty() && !resolve {
            return None;
        }
        let changed = DnsUpdate::HeloChanged { zones: zones.clone() };
        if let Some(old) = self.helo.take() {
            old.abort();
        }
        // An address literal is not a name: nothing to resolve (the evaluator passes it).
        let resolve = resolve && !name.starts_with('[');
        let (dns, name) = (self.dns.clone(), name.to_owned());
        self.helo = Some(tokio::spawn(async move {
            let status_task = resolve.then(|| {
                let (dns, name) = (dns.clone(), name.clone());
                // Postfix's reject_unknown_helo_hostname: an A, AAAA or MX record is enough.
                tokio::spawn(async move { dns.sender_domain(&name).await })
            });
            let found = lists(&dns, zones, |dns, zone| {
                let name = name.clone();
                async move { dns.list_name(&zone, &name).await }
            })
            .await;
            let status = match status_task {
                Some(task) => Some(task.await.unwrap_or(DomainStatus::TempFail)),
                None => None,
            };
            (found, status)
        }));
        Some(changed)
    }

    /// A new MAIL FROM: look the new domain up. What the session knew of the previous sender's
    /// domain no longer holds: the update says so.
    pub fn sender(&mut self, domain: Option<&str>) -> DnsUpdate {
        if let Some(old) = self.sender.take() {
            old.abort();
        }
        let zones = self.needs.zones_for(DnsblTarget::SenderDomain);
        let changed = DnsUpdate::SenderChanged { zones: zones.clone() };
        let Some(domain) = domain.map(str::to_owned) else { return changed };
        let resolve = self.needs.sender_domain;
        if zones.is_empty() && !resolve {
            return changed;
        }
        let dns = self.dns.clone();
        self.sender = Some(tokio::spawn(async move {
            let status_task = resolve.then(|| {
                let (dns, domain) = (dns.clone(), domain.clone());
                tokio::spawn(async move { dns.sender_domain(&domain).await })
            });
            let found = lists(&dns, zones, |dns, zone| {
                let domain = domain.clone();
                async move { dns.list_name(&zone, &domain).await }
            })
            .await;
            let status = match status_task {
                Some(task) => Some(task.await.unwrap_or(DomainStatus::TempFail)),
                None => None,
            };
            (found, status)
        }));
        changed
    }

    /// A new MAIL FROM: start its SPF check (of `sender`, `""` for `<>`, from `client` that
    /// said `helo_name`), when the farm checks SPF or DMARC. The previous sender's check no
    /// longer holds. `hostname` is the receiving host for SPF macros (`%{r}`).
    pub fn spf(&mut self, client: IpAddr, helo_name: &str, hostname: &str, sender: &str) {
        if let Some(old) = self.spf.take() {
            old.abort();
        }
        self.spf_done = None;
        let Some(need) = self.needs.spf else { return };
        let verifier = Verifier::new(&self.dns);
        let (helo_name, hostname, sender) = (helo_name.to_owned(), hostname.to_owned(), sender.to_owned());
        self.spf =
            Some(tokio::spawn(async move { verifier.spf(client, &helo_name, &hostname, &sender, need.helo).await }));
    }

    /// The current MAIL FROM's SPF check, waiting for it if it is still running (`None`: none
    /// was started, or its task failed).
    pub async fn spf_check(&mut self) -> Option<&SpfCheck> {
        if let Some(task) = self.spf.take() {
            self.spf_done = task.await.ok();
        }
        self.spf_done.as_ref()
    }

    /// Wait for what `stage` needs: the answers, for `Session::dns_answered`. DNS list hits and
    /// failures are counted in `metrics` as they arrive.
    pub async fn ready_for(&mut self, stage: Stage, metrics: &Metrics) -> Vec<DnsUpdate> {
        let (client, helo, sender) = self.needs.stages.get(index(stage)).copied().unwrap_or_default();
        let mut answers = Vec::new();
        if client {
            if let Some(task) = self.client.take() {
                let (found, reverse) = task.await.unwrap_or_default();
                listed(&mut answers, found, metrics);
                answers.extend(reverse.map(DnsUpdate::Reverse));
            }
        }
        if helo {
            if let Some(task) = self.helo.take() {
                let (found, status) = task.await.unwrap_or_default();
                listed(&mut answers, found, metrics);
                answers.push(DnsUpdate::HeloName(status));
            }
        }
        if sender {
            if let Some(task) = self.sender.take() {
                let (found, status) = task.await.unwrap_or_default();
                listed(&mut answers, found, metrics);
                answers.push(DnsUpdate::SenderDomain(status));
            }
        }
        if stage == Stage::Mail && self.needs.spf.is_some_and(|n| n.at_mail) {
            let result = self.spf_check().await.map(SpfCheck::result);
            if let Some(result) = result {
                metrics.sender_auth_verdict(&self.needs.farm, "spf", result.as_str());
            }
            answers.push(DnsUpdate::Spf(result));
        }
        answers
    }
}

/// Count the DNS lists' answers and add them to `answers`.
fn listed(answers: &mut Vec<DnsUpdate>, found: Lists, metrics: &Metrics) {
    for (zone, answer) in found {
        match answer {
            ListAnswer::Listed(_) => metrics.dnsbl_hits.get_or_create(&ZoneLabel { zone: zone.clone() }).inc(),
            ListAnswer::Error => metrics.dnsbl_errors.get_or_create(&ZoneLabel { zone: zone.clone() }).inc(),
            ListAnswer::NotListed => 0,
        };
        answers.push(DnsUpdate::Listed { zone, answer });
    }
}
