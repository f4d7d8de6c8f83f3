//! Sender authentication as facts of the evaluator: the SPF, DKIM, ARC and DMARC verdicts the
//! node's checks found (or `mtac explain` and `mtac test` were given), and the decisions made
//! from them — SPF at MAIL FROM (the program's `spf` step, [`spf_step`]) and DMARC after DATA
//! ([`dmarc_step`], the program's `dmarc` step at the `data` stage). No I/O and no mail-auth here: the runtime turns mail-auth's verdicts into
//! these types, so a flag and a node decide from the very same values.
//!
//! **Invariant:** a temporary DNS failure (`temperror`) is never a permanent refusal: it defers
//! (451) or passes with the verdict recorded, as the policy says.

use crate::eval::{Lookup, StepOutcome};
use crate::model::{DmarcSettings, Farm, OnFail, OnQuarantine, OnTempError, Reply, SpfSettings, Step};
use crate::syntax;

/// An SPF verdict (RFC 7208 section 2.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SpfResult {
    Pass,
    Fail,
    SoftFail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl SpfResult {
    pub const ALL: [SpfResult; 7] = [
        SpfResult::Pass,
        SpfResult::Fail,
        SpfResult::SoftFail,
        SpfResult::Neutral,
        SpfResult::None,
        SpfResult::TempError,
        SpfResult::PermError,
    ];

    /// The RFC 8601 name, also the metric label and the flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            SpfResult::Pass => "pass",
            SpfResult::Fail => "fail",
            SpfResult::SoftFail => "softfail",
            SpfResult::Neutral => "neutral",
            SpfResult::None => "none",
            SpfResult::TempError => "temperror",
            SpfResult::PermError => "permerror",
        }
    }

    pub fn parse(text: &str) -> Option<SpfResult> {
        SpfResult::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// A DKIM signature's or the ARC chain's verdict (RFC 8601 section 2.7.1, RFC 8617).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum AuthResult {
    Pass,
    Fail,
    Neutral,
    None,
    TempError,
    PermError,
}

impl AuthResult {
    pub const ALL: [AuthResult; 6] = [
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::Neutral,
        AuthResult::None,
        AuthResult::TempError,
        AuthResult::PermError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
        }
    }

    pub fn parse(text: &str) -> Option<AuthResult> {
        AuthResult::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One DKIM signature's verdict and the domain (`d=`) that signed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DkimVerdict {
    pub domain: String,
    pub result: AuthResult,
}

/// The ARC chain's verdict, who sealed it last (the newest ARC-Seal's `d=`), and what that
/// sealer recorded when it got the message: the author domain its ARC-Authentication-Results
/// give `dmarc=pass` for ([`aar_dmarc_pass_domain`]). `trust-arc` needs all three: a valid
/// chain proves who sealed, not that the message was genuine when sealed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArcVerdict {
    pub result: AuthResult,
    pub sealer: Option<String>,
    pub vouched_from: Option<String>,
}

/// A DMARC verdict (RFC 7489 section 11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DmarcResult {
    Pass,
    Fail,
    None,
    TempError,
    PermError,
    /// The message has no one author domain to check: no From field, several, several
    /// domains in it, or a From that the verifier could not read while the node could
    /// (`From : x@y`). RFC 7489 6.6.1 leaves such a message to local policy; left as `none`
    /// it would dodge every `p=reject`.
    BadFrom,
}

impl DmarcResult {
    pub const ALL: [DmarcResult; 6] = [
        DmarcResult::Pass,
        DmarcResult::Fail,
        DmarcResult::None,
        DmarcResult::TempError,
        DmarcResult::PermError,
        DmarcResult::BadFrom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DmarcResult::Pass => "pass",
            DmarcResult::Fail => "fail",
            DmarcResult::None => "none",
            DmarcResult::TempError => "temperror",
            DmarcResult::PermError => "permerror",
            DmarcResult::BadFrom => "bad-from",
        }
    }

    pub fn parse(text: &str) -> Option<DmarcResult> {
        DmarcResult::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// The policy the author domain publishes (`p=`, or `sp=` for a subdomain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }

    pub fn parse(text: &str) -> Option<DmarcPolicy> {
        [DmarcPolicy::None, DmarcPolicy::Quarantine, DmarcPolicy::Reject].into_iter().find(|p| p.as_str() == text)
    }
}

/// The DMARC verdict on the message's author domain (RFC5322.From).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DmarcVerdict {
    pub result: DmarcResult,
    pub policy: DmarcPolicy,
    /// The author domain (empty when `mtac explain` was not told it).
    pub domain: String,
}

/// What verification found in one message after DATA: the facts of [`dmarc_step`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageAuth {
    /// Every DKIM signature's verdict, in header order.
    pub dkim: Vec<DkimVerdict>,
    pub arc: Option<ArcVerdict>,
    /// `None`: not evaluated (the farm has no `dmarc`, or `explain` was not given `--dmarc`).
    pub dmarc: Option<DmarcVerdict>,
    /// The milters' and hooks' verdicts by name (`explain --milter`, test files' `milter`);
    /// the node asks its filters itself.
    pub filters: Vec<crate::filters::GivenFilter>,
}

/// The reply to an SPF `fail` the policy refuses (RFC 7372 section 3.2).
pub fn spf_fail_reply(domain: &str) -> Reply {
    Reply::new(550, "5.7.23", &format!("SPF validation failed: {domain} does not designate your address as a sender"))
}

/// The reply to an SPF `temperror` the policy defers (RFC 7372 section 3.2).
pub fn spf_temperror_reply() -> Reply {
    Reply::new(451, "4.7.24", "SPF validation error (temporary DNS failure), try again later")
}

/// The `spf` step at MAIL FROM: the verdict on the sender's domain (the HELO name's for the
/// null sender) and what the policy does with it. `None`: the check did not run or was not
/// given, so this evaluation cannot say.
pub fn spf_step(
    settings: Option<&SpfSettings>,
    spf: Option<SpfResult>,
    sender: Option<&str>,
    step: &Step,
) -> StepOutcome {
    let Some(settings) = settings else { return StepOutcome::Passed("no SPF check".to_owned()) };
    let Some(sender) = sender else { return StepOutcome::Passed("no sender yet".to_owned()) };
    let Some(result) = spf else { return StepOutcome::NotGiven("spf") };
    let domain = syntax::split_address(sender).map_or("the HELO name", |(_, d)| d);
    match (result, settings.fail, settings.temperror) {
        (SpfResult::Fail, OnFail::Refuse, _) => StepOutcome::Decided(Reply {
            text: format!("SPF validation failed: {domain} does not designate your address as a sender"),
            ..step.reply.clone()
        }),
        (SpfResult::TempError, _, OnTempError::Defer) => StepOutcome::Decided(spf_temperror_reply()),
        (SpfResult::Fail, OnFail::Record, _) => StepOutcome::Passed("spf=fail (recorded)".to_owned()),
        (SpfResult::TempError, _, OnTempError::Pass) => StepOutcome::Passed("spf=temperror (recorded)".to_owned()),
        (other, _, _) => StepOutcome::Passed(format!("spf={}", other.as_str())),
    }
}

/// MAIL FROM's domain when SPF passed for it: the one sender domain a session has verified
/// before DATA (DKIM comes with the message). `None` for `<>` (its verdict is the HELO name's),
/// for any other verdict, and when SPF was not checked or not given. Allow-list entries written
/// `verified=#true` and `greylist key="spf"` trust a sender domain only through this.
pub fn spf_verified_domain(spf: Option<SpfResult>, sender: Option<&str>) -> Option<&str> {
    if spf != Some(SpfResult::Pass) {
        return None;
    }
    sender.and_then(syntax::split_address).map(|(_, domain)| domain)
}

/// The reply to a DMARC failure the policy refuses.
fn dmarc_refusal(domain: &str, policy: DmarcPolicy) -> Reply {
    Reply::new(
        550,
        "5.7.1",
        &format!("Message rejected: it fails the DMARC policy of {domain} (p={})", policy.as_str()),
    )
}

fn dmarc_deferral(domain: &str, why: &str) -> Reply {
    Reply::new(451, "4.7.1", &format!("DMARC policy of {domain}: {why}, try again later"))
}

/// The `dmarc` step after DATA: what the farm's `dmarc` does with the message's verdicts.
/// `None`: the message was not verified, or `explain` was not given `--dmarc`.
pub fn dmarc_step(tables: &dyn Lookup, farm: &Farm, message: Option<&MessageAuth>) -> StepOutcome {
    let Some(settings) = &farm.sender_auth.dmarc else { return StepOutcome::Passed("no DMARC check".to_owned()) };
    let Some(verdict) = message.and_then(|m| m.dmarc.as_ref()) else { return StepOutcome::NotGiven("dmarc") };
    dmarc_outcome(tables, settings, verdict, message.and_then(|m| m.arc.as_ref()))
}

fn dmarc_outcome(
    tables: &dyn Lookup,
    settings: &DmarcSettings,
    verdict: &DmarcVerdict,
    arc: Option<&ArcVerdict>,
) -> StepOutcome {
    let domain = if verdict.domain.is_empty() { "the author domain" } else { verdict.domain.as_str() };
    let recorded = |why: String| StepOutcome::Passed(why);
    match verdict.result {
        DmarcResult::Pass => return recorded(format!("dmarc=pass ({domain})")),
        DmarcResult::None => return recorded(format!("dmarc=none ({domain} publishes no policy)")),
        DmarcResult::PermError => return recorded(format!("dmarc=permerror ({domain}: broken record, recorded)")),
        DmarcResult::TempError => {
            return match settings.temperror {
                OnTempError::Defer => StepOutcome::Decided(dmarc_deferral(domain, "temporary DNS failure")),
                OnTempError::Pass => recorded("dmarc=temperror (recorded)".to_owned()),
            }
        }
        DmarcResult::BadFrom => {
            return match settings.reject {
                OnFail::Refuse => StepOutcome::Decided(Reply::new(
                    550,
                    "5.7.1",
                    "Message rejected: one From header with one author domain is needed for DMARC (RFC 7489 6.6.1)",
                )),
                OnFail::Record => recorded("dmarc=bad-from (no one author domain; recorded)".to_owned()),
            }
        }
        DmarcResult::Fail => {}
    }
    let policy = verdict.policy;
    if policy == DmarcPolicy::None {
        return recorded(format!("dmarc=fail, {domain} asks for nothing (p=none): recorded"));
    }
    let listed = |table: Option<u32>, name: &str| {
        table.is_some_and(|t| tables.domain(t, &syntax::normalize_domain(name)).is_some())
    };
    if !verdict.domain.is_empty() && listed(settings.never_refuse, &verdict.domain) {
        return recorded(format!("dmarc=fail, {domain} is never refused (never-refuse): recorded"));
    }
    // A trusted sealer saves the message only if it recorded that the message passed DMARC for
    // this very author domain when it got it: a valid chain alone proves who sealed, and anyone
    // who can send through the sealer can have a forgery sealed.
    if let Some(ArcVerdict { result: AuthResult::Pass, sealer: Some(sealer), vouched_from: Some(vouched) }) = arc {
        if !verdict.domain.is_empty() && *vouched == verdict.domain && listed(settings.trust_arc, sealer) {
            return recorded(format!(
                "dmarc=fail, but trusted {sealer} sealed a valid ARC chain recording dmarc=pass for {domain}: recorded"
            ));
        }
    }
    match (policy, settings.reject, settings.quarantine) {
        (DmarcPolicy::Reject, OnFail::Refuse, _) | (DmarcPolicy::Quarantine, _, OnQuarantine::Refuse) => {
            StepOutcome::Decided(dmarc_refusal(domain, policy))
        }
        (DmarcPolicy::Quarantine, _, OnQuarantine::Defer) => {
            StepOutcome::Decided(dmarc_deferral(domain, "the message fails it (p=quarantine)"))
        }
        (DmarcPolicy::Quarantine, _, OnQuarantine::Header) => {
            recorded("dmarc=fail, p=quarantine: relayed with policy.dmarc=quarantine".to_owned())
        }
        _ => recorded(format!("dmarc=fail, p={}: recorded", policy.as_str())),
    }
}

/// `DOMAIN=RESULT`, as `mtac explain --dkim` and a test's `dkim` give a signature's verdict.
pub fn parse_dkim(text: &str) -> Option<DkimVerdict> {
    let (domain, result) = text.split_once('=')?;
    let domain = syntax::normalize_domain(domain);
    syntax::is_hostname(&domain).then_some(())?;
    Some(DkimVerdict { domain, result: AuthResult::parse(result)? })
}

/// `RESULT[:POLICY[:DOMAIN]]` (`fail:reject`, `fail:quarantine:example.org`), as `--dmarc` gives
/// the DMARC verdict, the policy the author domain publishes (default `none`) and that domain
/// (default: the sender's).
pub fn parse_dmarc(text: &str, sender: Option<&str>) -> Option<DmarcVerdict> {
    let mut parts = text.splitn(3, ':');
    let result = DmarcResult::parse(parts.next()?)?;
    let policy = match parts.next() {
        Some(p) => DmarcPolicy::parse(p)?,
        None => DmarcPolicy::None,
    };
    let domain = match parts.next() {
        Some(d) => syntax::normalize_domain(d),
        None => sender.and_then(syntax::split_address).map(|(_, d)| syntax::normalize_domain(d)).unwrap_or_default(),
    };
    Some(DmarcVerdict { result, policy, domain })
}

/// `RESULT[:SEALER[:DOMAIN]]` (`pass:lists.example.org:bank.example`), as `--arc` gives the ARC
/// chain's verdict, the domain of its newest seal, and the author domain that seal's
/// ARC-Authentication-Results record `dmarc=pass` for.
pub fn parse_arc(text: &str) -> Option<ArcVerdict> {
    let mut parts = text.splitn(3, ':');
    let result = AuthResult::parse(parts.next()?)?;
    let mut domain = || parts.next().map(syntax::normalize_domain);
    let sealer = domain();
    let vouched_from = domain();
    Some(ArcVerdict { result, sealer, vouched_from })
}

/// The author domain that one ARC-Authentication-Results value (RFC 8617 4.1.1: `i=N;
/// authserv-id; resinfo; …`) records `dmarc=pass` for — the `header.from` of its `dmarc=pass`
/// result, lowercased. `None` when it records no DMARC pass, or several for different domains.
/// Comments (`(…)`, nested) are dropped and quoted values unquoted, as RFC 8601 section 2.2
/// writes them; anything this cannot read is no pass.
pub fn aar_dmarc_pass_domain(value: &str) -> Option<String> {
    let text = without_comments(value)?;
    let mut found: Option<String> = None;
    // The first two parts are the instance tag and the authserv-id.
    for resinfo in text.split(';').skip(2) {
        let mut words = resinfo.split_ascii_whitespace();
        let Some(method) = words.next() else { continue };
        let Some((name, result)) = method.split_once('=') else { continue };
        if !name.eq_ignore_ascii_case("dmarc") || !result.eq_ignore_ascii_case("pass") {
            continue;
        }
        let from = words.find_map(|w| {
            let (key, value) = w.split_once('=')?;
            key.eq_ignore_ascii_case("header.from").then(|| syntax::normalize_domain(value.trim_matches('"')))
        })?;
        match &found {
            Some(other) if *other != from => return None,
            _ => found = Some(from),
        }
    }
    found.filter(|d| syntax::is_hostname(d))
}

/// `value` with its RFC 5322 comments removed (nested, with `\` escapes); `None` when they do
/// not balance. Quoted strings keep their content, parentheses included.
fn without_comments(value: &str) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            if depth == 0 {
                out.push(c);
            }
            continue;
        }
        match c {
            '\\' => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.checked_sub(1)?,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    (depth == 0 && !quoted).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_forms_parse() {
        assert_eq!(SpfResult::parse("softfail"), Some(SpfResult::SoftFail));
        assert_eq!(parse_dkim("Example.COM=pass").unwrap().domain, "example.com");
        assert!(parse_dkim("example.com=maybe").is_none());
        let d = parse_dmarc("fail:reject", Some("a@bank.example")).unwrap();
        assert_eq!((d.result, d.policy, d.domain.as_str()), (DmarcResult::Fail, DmarcPolicy::Reject, "bank.example"));
        assert_eq!(parse_dmarc("pass", None).unwrap().policy, DmarcPolicy::None);
        assert_eq!(parse_arc("pass:lists.example").unwrap().sealer.as_deref(), Some("lists.example"));
        let vouched = parse_arc("pass:lists.example:Bank.Example").unwrap();
        assert_eq!(vouched.vouched_from.as_deref(), Some("bank.example"));
        assert_eq!(parse_arc("pass").unwrap().vouched_from, None);
        assert!(parse_arc("fine").is_none());
    }

    #[test]
    fn the_sealers_results_vouch_only_for_a_dmarc_pass_of_one_domain() {
        let pass = |v: &str| aar_dmarc_pass_domain(v);
        assert_eq!(
            pass("i=1; lists.example; spf=pass smtp.mailfrom=bank.example; dmarc=pass (p=reject) header.from=Bank.Example"),
            Some("bank.example".to_owned())
        );
        assert_eq!(
            pass("i=1; lists.example; dmarc=pass header.from=\"bank.example\""),
            Some("bank.example".to_owned())
        );
        assert_eq!(
            pass("i=1; lists.example;\r\n\tdmarc=pass\r\n\theader.from=bank.example"),
            Some("bank.example".to_owned())
        );
        // What a forgery sealed by the list looks like: the list saw the failure.
        assert_eq!(
            pass("i=1; lists.example; dkim=pass header.d=bank.example; dmarc=fail header.from=bank.example"),
            None
        );
        assert_eq!(pass("i=1; lists.example; dkim=pass header.d=bank.example"), None);
        // A pass hidden in a comment, or in the authserv-id's place, is no pass.
        assert_eq!(
            pass("i=1; lists.example; dmarc=fail (dmarc=pass header.from=x.example) header.from=bank.example"),
            None
        );
        assert_eq!(pass("i=1; dmarc=pass header.from=bank.example"), None);
        assert_eq!(pass("i=1; lists.example; dmarc=pass"), None, "no domain, nothing vouched");
        assert_eq!(
            pass("i=1; lists.example; dmarc=pass header.from=a.example; dmarc=pass header.from=b.example"),
            None
        );
        assert_eq!(pass("i=1; lists.example; dmarc=pass (unbalanced header.from=bank.example"), None);
        assert_eq!(pass("i=1; lists.example; dmarc=pass header.from=bank..example"), None);
    }

    #[test]
    fn only_an_spf_pass_verifies_the_sender_domain() {
        let pass = Some(SpfResult::Pass);
        assert_eq!(spf_verified_domain(pass, Some("a@bank.example")), Some("bank.example"));
        assert_eq!(spf_verified_domain(pass, Some("")), None, "the null sender's verdict is the HELO name's");
        assert_eq!(spf_verified_domain(None, Some("a@bank.example")), None);
        for other in SpfResult::ALL.into_iter().filter(|r| *r != SpfResult::Pass) {
            assert_eq!(spf_verified_domain(Some(other), Some("a@bank.example")), None, "{other:?}");
        }
    }
}
