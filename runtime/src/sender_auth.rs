//! Sender authentication on the node: SPF at MAIL FROM, and after DATA every DKIM signature, the
//! ARC chain and DMARC, with mail-auth (Stalwart's) on the node's own resolver — the same
//! hickory `TokioResolver` as every other lookup ([`Dns`]), so the cache and the policy's
//! nameservers are shared — and the `Authentication-Results` field (RFC 8601) that carries every
//! verdict to the back end.
//!
//! Each check (SPF, then DKIM, ARC and DMARC) is bounded by the farm's DNS timeout; a check cut
//! short is a `temperror`, which the evaluator never turns into a 5xx. The verdicts are turned
//! into the evaluator's types ([`mtac_ruleset::sender_auth`]) here, and nowhere else: the
//! evaluator decides from them, as `mtac explain --spf/--dmarc` does.
//!
//! **Memory and CPU:** mail-auth verifies a message held in one buffer (it hashes the
//! canonicalised headers and body and parses the header block), so the message is read from the
//! spool file into memory for the verification, bounded by the farm's message size (the spool
//! never holds more: DATA refuses a larger message first) and counted against the spool's budget
//! of bytes in flight, and dropped before the relay streams the file. The caller
//! (`conn::verify`) runs it on a blocking thread: hashing a large body would hold a session thread.
//! Parsing hashes the body once per distinct canonicalisation and algorithm (at most four
//! for DKIM, `l=` being refused), and at most [`MAX_DKIM_SIGNATURES`] signatures are checked.

use crate::dns::Dns;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult as MaDmarc, DnsError, Error,
    MessageAuthenticator, SpfOutput, SpfResult as MaSpf,
};
use mtac_ruleset::model::SenderAuth;
use mtac_ruleset::sender_auth::{
    aar_dmarc_pass_domain, ArcVerdict, AuthResult, DkimVerdict, DmarcPolicy, DmarcResult, DmarcVerdict, MessageAuth,
    SpfResult,
};
use std::net::IpAddr;
use std::time::Duration;

/// The SPF checks of one MAIL FROM: the MAIL FROM identity (the HELO name's for `<>`) and,
/// when the policy asks, the HELO identity; kept until DATA for Authentication-Results and
/// DMARC's SPF alignment.
#[derive(Debug, Clone)]
pub struct SpfCheck {
    pub mail_from: SpfOutput,
    pub helo: Option<SpfOutput>,
    /// The envelope sender as given (`""` for `<>`).
    pub sender: String,
    pub helo_name: String,
}

impl SpfCheck {
    /// MAIL FROM's verdict: what the `spf` step decides on.
    pub fn result(&self) -> SpfResult {
        spf_result(self.mail_from.result())
    }

    /// The HELO identity's verdict (recorded only).
    pub fn helo_result(helo: &SpfOutput) -> SpfResult {
        spf_result(helo.result())
    }
}

fn spf_result(result: MaSpf) -> SpfResult {
    match result {
        MaSpf::Pass => SpfResult::Pass,
        MaSpf::Fail => SpfResult::Fail,
        MaSpf::SoftFail => SpfResult::SoftFail,
        MaSpf::Neutral => SpfResult::Neutral,
        MaSpf::TempError => SpfResult::TempError,
        MaSpf::PermError => SpfResult::PermError,
        MaSpf::None => SpfResult::None,
    }
}

fn auth_result(result: &DkimResult) -> AuthResult {
    match result {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::None => AuthResult::None,
        DkimResult::TempError(_) => AuthResult::TempError,
        DkimResult::PermError(_) => AuthResult::PermError,
    }
}

fn dmarc_result(result: &MaDmarc) -> DmarcResult {
    match result {
        MaDmarc::Pass => DmarcResult::Pass,
        MaDmarc::Fail(_) => DmarcResult::Fail,
        MaDmarc::TempError(_) => DmarcResult::TempError,
        MaDmarc::PermError(_) => DmarcResult::PermError,
        MaDmarc::None => DmarcResult::None,
    }
}

fn dmarc_policy(policy: mail_auth::dmarc::Policy) -> DmarcPolicy {
    match policy {
        mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
        mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
        mail_auth::dmarc::Policy::None | mail_auth::dmarc::Policy::Unspecified => DmarcPolicy::None,
    }
}

/// mail-auth calls a signature whose body hash does not match `neutral`; RFC 6376 6.3 makes it a
/// failed verification (PERMFAIL) and OpenDKIM and rspamd write `dkim=fail`, which is what mail
/// stores and operators filter on.
fn body_hash_is_a_failure<'x>(parsed: &'x AuthenticatedMessage<'x>, output: DkimOutput<'x>) -> DkimOutput<'x> {
    let body_hash = Error::Dkim(DkimError::FailedBodyHashMatch);
    if !matches!(output.result(), DkimResult::Neutral(e) if *e == body_hash) {
        return output;
    }
    // The output lends its signature for its own lifetime only: find it in the message.
    let signed = output.signature().map(|s| s.b.clone());
    match parsed.dkim_headers.iter().find(|h| Some(&h.header.b) == signed.as_ref()) {
        Some(header) => DkimOutput::fail(body_hash).with_signature(&header.header),
        None => output,
    }
}

/// The most DKIM signatures of one message that are checked.
pub const MAX_DKIM_SIGNATURES: usize = 5;

/// mail-auth on the node's resolver: cheap to clone (the resolver is shared).
#[derive(Clone)]
pub struct Verifier {
    auth: MessageAuthenticator,
    timeout: Duration,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// What verifying one message found: the evaluator's facts and the one
/// `Authentication-Results` field (CRLF-terminated) to relay in front of the message.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    pub facts: MessageAuth,
    pub header: String,
}

impl Verifier {
    pub fn new(dns: &Dns) -> Verifier {
        Verifier { auth: MessageAuthenticator(dns.resolver().clone()), timeout: dns.timeout() }
    }

    /// SPF of `sender` (the HELO name's for `""`) from `ip`, and of the HELO name when `helo`.
    /// Each identity's check is bounded by the DNS timeout: past it, `temperror`. The two run at
    /// once, so a dead resolver holds MAIL for one timeout, not two.
    pub async fn spf(&self, ip: IpAddr, helo_name: &str, hostname: &str, sender: &str, helo: bool) -> SpfCheck {
        let mail_from = self.bounded_spf(SpfParameters::verify_mail_from(ip, helo_name, hostname, sender));
        let helo_output = async {
            if helo && !helo_name.is_empty() && !helo_name.starts_with('[') {
                Some(self.bounded_spf(SpfParameters::verify_ehlo(ip, helo_name, hostname)).await)
            } else {
                None
            }
        };
        let (mail_from, helo_output) = tokio::join!(mail_from, helo_output);
        SpfCheck { mail_from, helo: helo_output, sender: sender.to_owned(), helo_name: helo_name.to_owned() }
    }

    /// One identity's SPF check, bounded by the DNS timeout.
    async fn bounded_spf(&self, params: SpfParameters<'_>) -> SpfOutput {
        tokio::time::timeout(self.timeout, self.auth.verify_spf(params)).await.unwrap_or_else(|_| {
            // The domain is only used for the header's text; the verdict is what counts.
            SpfOutput::new(String::new()).with_result(MaSpf::TempError)
        })
    }

    /// DKIM (every signature) and ARC when `checks.dkim`, and DMARC when `checks.dmarc`, of
    /// `message` (the sender's bytes, after our own Received header); and the
    /// Authentication-Results field with every verdict, SPF's included, under `authserv_id`.
    /// With neither check, `message` is not read (SPF's verdict alone is written).
    pub async fn message(
        &self,
        message: &[u8],
        ip: IpAddr,
        spf: Option<&SpfCheck>,
        checks: &SenderAuth,
        authserv_id: &str,
    ) -> Verified {
        let (after_data, dmarc) = (checks.after_data(), checks.dmarc.is_some());
        let mut results = AuthenticationResults::new(authserv_id);
        if let Some(spf) = spf {
            if let Some(helo) = &spf.helo {
                results = results.with_spf_ehlo_result(helo, ip, &spf.helo_name);
            }
            results = results.with_spf_mailfrom_result(&spf.mail_from, ip, &spf.sender, &spf.helo_name);
        }
        let mut facts = MessageAuth::default();
        let mut parsed = if after_data { AuthenticatedMessage::parse(message) } else { None };
        if let Some(parsed) = parsed.as_mut() {
            // Each signature costs a DNS lookup and a public-key operation: past the first few
            // (in header order: the newest first), the rest are not checked (RFC 6376 6.1 lets a
            // verifier limit them; OpenDKIM's default is 3).
            if parsed.dkim_headers.len() > MAX_DKIM_SIGNATURES {
                tracing::info!(
                    signatures = parsed.dkim_headers.len(),
                    checked = MAX_DKIM_SIGNATURES,
                    "DKIM: too many signatures, the rest are not checked"
                );
                parsed.dkim_headers.truncate(MAX_DKIM_SIGNATURES);
            }
            let parsed = &*parsed;
            // `dkim #false` beside `dmarc`: DMARC decides from SPF alone, no signature is checked.
            let (dkim, arc) = if checks.dkim {
                let dkim = tokio::time::timeout(self.timeout, self.auth.verify_dkim(parsed)).await.ok();
                let arc = tokio::time::timeout(self.timeout, self.auth.verify_arc(parsed)).await.ok();
                (dkim, Some(arc))
            } else {
                (Some(Vec::new()), None)
            };
            // A check cut short by the timeout may have held the aligned pass: DMARC must not
            // call the message a failure without it (below), or a slow key server is a 550.
            let mut cut_short = dkim.is_none();
            let dkim: Vec<_> =
                dkim.unwrap_or_default().into_iter().map(|o| body_hash_is_a_failure(parsed, o)).collect();
            let header_from = parsed.from.first().map(String::as_str).unwrap_or_default();
            results = results.with_dkim_results(&dkim, header_from);
            facts.dkim = dkim
                .iter()
                .map(|d| DkimVerdict {
                    domain: d.signature().map(|s| s.d.to_ascii_lowercase()).unwrap_or_default(),
                    result: auth_result(d.result()),
                })
                .collect();
            match arc {
                None => {}
                Some(Some(arc)) => {
                    results = results.with_arc_result(&arc, ip);
                    let newest = arc.sets().last();
                    facts.arc = Some(ArcVerdict {
                        result: auth_result(arc.result()),
                        sealer: newest.map(|set| set.seal.header.d.to_ascii_lowercase()),
                        // What the sealer recorded when it got the message: `trust-arc` needs
                        // its dmarc=pass for the author domain, not only its valid seal.
                        vouched_from: newest.and_then(|set| {
                            std::str::from_utf8(set.results.value).ok().and_then(aar_dmarc_pass_domain)
                        }),
                    });
                }
                // Cut short by the timeout: the chain could not be checked.
                Some(None) => {
                    cut_short = true;
                    facts.arc = Some(ArcVerdict { result: AuthResult::TempError, sealer: None, vouched_from: None });
                }
            }
            if dmarc {
                // No SPF check: DMARC aligns on DKIM alone (`none` never aligns).
                let no_spf = SpfOutput::new(String::new());
                let spf_output = spf.map_or(&no_spf, |s| &s.mail_from);
                // RFC 7489 3.1.2: the MAIL FROM domain, the HELO name's for `<>`.
                let mail_from_domain =
                    spf.map_or("", |s| s.sender.rsplit_once('@').map_or(s.helo_name.as_str(), |(_, d)| d));
                let params = DmarcParameters::new(parsed, &dkim, mail_from_domain, spf_output);
                let verdict = match tokio::time::timeout(self.timeout, self.auth.verify_dmarc(params)).await {
                    Ok(output) => {
                        // The field says what the step decides on: a failure whose DKIM or ARC
                        // check was cut short is a temperror there too.
                        let output = if cut_short && matches!(output.result(), MaDmarc::Fail(_)) {
                            let why = "DKIM or ARC check cut short by the DNS timeout".to_owned();
                            output.with_dkim_result(MaDmarc::TempError(Error::Dns(DnsError::Resolver(why))))
                        } else {
                            output
                        };
                        results = results.with_dmarc_result(&output);
                        let result = dmarc_result(&output.result());
                        DmarcVerdict {
                            result,
                            policy: dmarc_policy(output.policy()),
                            domain: output.domain().to_ascii_lowercase(),
                        }
                    }
                    Err(_) => DmarcVerdict {
                        result: DmarcResult::TempError,
                        policy: DmarcPolicy::None,
                        domain: String::new(),
                    },
                };
                facts.dmarc = Some(verdict);
            }
        } else if after_data && dmarc {
            // Not a message mail-auth can parse (no header block): nothing to align with.
            facts.dmarc =
                Some(DmarcVerdict { result: DmarcResult::PermError, policy: DmarcPolicy::None, domain: String::new() });
        }
        let mut header = String::with_capacity(256);
        header.push_str("Authentication-Results: ");
        let text = results.to_string();
        header.push_str(&text);
        if !text.contains(';') {
            header.push_str("; none");
        }
        header.push_str("\r\n");
        Verified { facts, header }
    }
}

/// One word per check for the `message` log line: `spf=pass dkim=pass,fail arc=none dmarc=fail`.
pub fn summary(spf: Option<SpfResult>, facts: &MessageAuth) -> String {
    let mut out = Vec::new();
    if let Some(spf) = spf {
        out.push(format!("spf={}", spf.as_str()));
    }
    if !facts.dkim.is_empty() {
        let all: Vec<&str> = facts.dkim.iter().map(|d| d.result.as_str()).collect();
        out.push(format!("dkim={}", all.join(",")));
    }
    if let Some(arc) = &facts.arc {
        out.push(format!("arc={}", arc.result.as_str()));
    }
    if let Some(dmarc) = &facts.dmarc {
        out.push(format!("dmarc={}", dmarc.result.as_str()));
    }
    out.join(" ")
}
