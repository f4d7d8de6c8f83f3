//! `mtac test`: declarative policy tests kept beside the policy in git.
//!
//! A test file is KDL. It names the policy it tests and lists sessions with the reply each must get:
//!
//! ```kdl
//! policy "mx.kdl"
//! test "a DNSBL-listed client is refused at RCPT" {
//!     farm "mx"
//!     client "192.0.2.1"
//!     helo "mail.example.org"
//!     from "alice@example.org"
//!     rcpt "john@example.com"
//!     dnsbl "zen.spamhaus.org" "127.0.0.2"
//!     expect "554 5.7.1" stage="rcpt" rule="dnsbl"
//! }
//! ```
//!
//! `expect "accept" shadow="dnsbl"` also asks that the `shadow` rule `dnsbl` reported the
//! refusal it would have given.
//!
//! Each test is evaluated against the compiled ruleset with [`mtac_ruleset::eval::simulate`], the
//! function the runtime and `mtac explain` use, so a passing test proves what a node will answer.

use crate::diag::{did_you_mean, Diag, Diagnostics, SourceFile};
use kdl::{KdlDocument, KdlNode, KdlValue};
use mtac_ruleset::eval::{
    self, DirectoryAnswer, DomainStatus, Facts, GivenDns, GreylistStatus, ListAnswer, MessageAuth, ReverseDns,
    SpfResult,
};
use mtac_ruleset::model::Stage;
use mtac_ruleset::sender_auth;
use mtac_ruleset::Ruleset;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One session to evaluate and what it must get.
#[derive(Debug, Clone)]
pub struct PolicyTest {
    pub name: String,
    pub line: usize,
    pub farm: Option<String>,
    pub session: Session,
    pub expect: Expectation,
}

/// The facts of a session, as given on the command line or in a test.
#[derive(Debug, Clone)]
pub struct Session {
    pub client: IpAddr,
    pub helo: Option<String>,
    pub from: Option<String>,
    pub rcpt: Option<String>,
    pub authenticated: bool,
    /// Who authenticated (implies `authenticated`): sender ownership is checked for this user.
    pub user: Option<String>,
    /// The client started TLS; `None`: it did wherever the farm offers TLS.
    pub tls: Option<bool>,
    pub dns: GivenDns,
    /// The greylist store's verdict (`greylist "pass"|"defer"`).
    pub greylist: Option<GreylistStatus>,
    /// The directory's answer on the recipient (`directory "known"|…`).
    pub directory: Option<DirectoryAnswer>,
    /// The message's DKIM, ARC and DMARC verdicts (`dkim`, `arc`, `dmarc`).
    pub message: MessageAuth,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            client: IpAddr::from([192, 0, 2, 1]),
            helo: None,
            from: None,
            rcpt: None,
            authenticated: false,
            user: None,
            tls: None,
            dns: GivenDns::default(),
            greylist: None,
            directory: None,
            message: MessageAuth::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Expectation {
    /// `accept`, or a reply prefix such as `550` or `550 5.7.1`.
    pub reply: String,
    pub stage: Option<Stage>,
    pub rule: Option<String>,
    /// `shadow="RULE"`: that `shadow` rule must have reported a refusal it did not enforce.
    pub shadow: Option<String>,
}

/// A test file: the policy it names and its tests.
pub struct TestFile {
    pub policy: PathBuf,
    pub tests: Vec<PolicyTest>,
}

/// What one test got.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub stage: Option<Stage>,
    pub reply: String,
    pub rule: Option<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.stage, &self.rule) {
            (Some(stage), Some(rule)) => write!(f, "{} at {} (rule {rule})", self.reply, stage.as_str()),
            (Some(stage), None) => write!(f, "{} at {}", self.reply, stage.as_str()),
            _ => write!(f, "{}", self.reply),
        }
    }
}

/// Parse a DNS list answer flag value: `127.0.0.2`, `127.0.0.2,127.0.0.4`, `none`, `error`.
pub fn parse_list_answer(text: &str) -> Option<ListAnswer> {
    match text {
        "none" | "not-listed" => Some(ListAnswer::NotListed),
        "error" | "timeout" | "servfail" => Some(ListAnswer::Error),
        _ => text
            .split(',')
            .map(|a| a.trim().parse::<Ipv4Addr>().ok())
            .collect::<Option<Vec<_>>>()
            .map(ListAnswer::Listed),
    }
}

pub fn parse_domain_status(text: &str) -> Option<DomainStatus> {
    match text {
        "resolves" | "ok" => Some(DomainStatus::Resolves),
        "nxdomain" | "no-records" => Some(DomainStatus::NoRecords),
        "null-mx" => Some(DomainStatus::NullMx),
        "tempfail" | "servfail" => Some(DomainStatus::TempFail),
        _ => None,
    }
}

/// `confirmed:host.example`, `unconfirmed:host.example`, `none`, `tempfail`.
pub fn parse_reverse(text: &str) -> Option<ReverseDns> {
    match text.split_once(':') {
        Some(("confirmed", name)) if !name.is_empty() => Some(ReverseDns::Confirmed(name.to_owned())),
        Some(("unconfirmed", name)) if !name.is_empty() => Some(ReverseDns::Unconfirmed(name.to_owned())),
        _ => match text {
            "none" => Some(ReverseDns::None),
            "tempfail" => Some(ReverseDns::TempFail),
            _ => None,
        },
    }
}

pub fn parse_greylist(text: &str) -> Option<GreylistStatus> {
    match text {
        "pass" => Some(GreylistStatus::Pass),
        "defer" => Some(GreylistStatus::Defer),
        _ => None,
    }
}

pub fn parse_directory(text: &str) -> Option<DirectoryAnswer> {
    match text {
        "known" => Some(DirectoryAnswer::Known),
        "unknown" => Some(DirectoryAnswer::Unknown),
        "unavailable" => Some(DirectoryAnswer::Unavailable),
        _ => None,
    }
}

/// Evaluate one session against a farm, exactly as the runtime decides.
pub fn run_session(
    ruleset: &Ruleset,
    farm: &mtac_ruleset::model::Farm,
    session: &Session,
) -> (eval::Simulation, Outcome) {
    run_session_with(ruleset, ruleset, farm, session)
}

/// [`run_session`], its table lookups made through `tables` (`explain` records them there to
/// name the entries that matched).
pub fn run_session_with(
    tables: &dyn eval::Lookup,
    ruleset: &Ruleset,
    farm: &mtac_ruleset::model::Farm,
    session: &Session,
) -> (eval::Simulation, Outcome) {
    let facts = Facts {
        client_ip: session.client,
        helo: session.helo.as_deref(),
        sender: session.from.as_deref(),
        recipient: session.rcpt.as_deref(),
        authenticated: session.authenticated || session.user.is_some(),
        user: session.user.as_deref(),
        // A modern client starts TLS whenever it is offered; a test says `tls #false` otherwise.
        tls: session.tls.unwrap_or(farm.tls.is_some()),
        hostname: &ruleset.policy().hostname,
        dns: &session.dns,
        greylist: session.greylist,
        directory: session.directory,
        message: Some(&session.message),
    };
    let simulation = eval::simulate(tables, farm, &facts);
    let outcome = match simulation.refusal() {
        Some((stage, decision)) => Outcome {
            stage: Some(stage),
            // At connect the refusal is the greeting, as the node sends it.
            reply: match &decision.reply {
                Some(r) if stage == Stage::Connect => r.as_greeting(&ruleset.policy().hostname).to_string(),
                Some(r) => r.to_string(),
                None => String::new(),
            },
            rule: decision.rule.clone(),
        },
        None => Outcome { stage: None, reply: "accept".to_owned(), rule: None },
    };
    (simulation, outcome)
}

/// The session authenticated, but nobody said as whom: the node would check that the user owns
/// the sender, and the simulation could not.
fn sender_unchecked(simulation: &eval::Simulation) -> bool {
    simulation.stages.iter().flat_map(|(_, d)| &d.trace).any(|line| line.outcome == eval::StepOutcome::UserNotGiven)
}

impl PolicyTest {
    /// `Ok(outcome)` when the test passes, `Err((outcome, why))` otherwise.
    pub fn check(&self, ruleset: &Ruleset) -> Result<Outcome, (Option<Outcome>, String)> {
        let farm = match &self.farm {
            Some(name) => ruleset.farm(name),
            None => ruleset.policy().farms.first(),
        };
        let Some(farm) = farm else {
            let names: Vec<&str> = ruleset.policy().farms.iter().map(|f| f.name.as_str()).collect();
            return Err((None, format!("no farm {:?} in the policy (farms: {})", self.farm, names.join(", "))));
        };
        let (simulation, outcome) = run_session(ruleset, farm, &self.session);
        // The node checks that whoever authenticated owns the sender; without the user, no
        // outcome from MAIL FROM on is one the node would give.
        if sender_unchecked(&simulation) {
            return Err((
                Some(outcome),
                "a decided outcome: the node checks the authenticated user owns the sender; give user \"NAME\""
                    .to_owned(),
            ));
        }
        // A verdict the node finds for itself (SPF, DMARC) that the test does not give: the
        // node could decide otherwise, so no outcome past that step is one it vouches for.
        let not_given = simulation.stages.iter().flat_map(|(_, d)| &d.trace).find_map(|line| match line.outcome {
            eval::StepOutcome::NotGiven(fact) => Some(fact),
            _ => None,
        });
        if let Some(fact) = not_given {
            let example = match fact {
                "spf" => "spf \"pass\"",
                "milter" => "milter \"NAME=continue\"",
                _ => "dmarc \"fail:reject\"",
            };
            return Err((
                Some(outcome),
                format!("a decided outcome: the node checks {fact} here; give e.g. {example}"),
            ));
        }
        // "accept" while the node would still ask the directory or the greylist store is not
        // an outcome the test can vouch for: say which fact is missing.
        if self.expect.reply == "accept" && outcome.stage.is_none() {
            let last = simulation.stages.last().map(|(_, d)| d);
            let missing = match last {
                Some(d) if d.directory_pending => Some("directory \"known\"|\"unknown\"|\"unavailable\""),
                Some(d) if d.greylist_pending => Some("greylist \"pass\"|\"defer\""),
                _ => None,
            };
            if let Some(fact) = missing {
                return Err((Some(outcome), format!("a decided outcome: the node would still ask; give {fact}")));
            }
        }
        let reply_ok = if self.expect.reply == "accept" {
            outcome.stage.is_none()
        } else {
            outcome.stage.is_some() && outcome.reply.starts_with(&self.expect.reply)
        };
        let stage_ok = self.expect.stage.is_none() || self.expect.stage == outcome.stage;
        let rule_ok = self.expect.rule.is_none() || self.expect.rule == outcome.rule;
        let shadowed: Vec<&str> =
            simulation.stages.iter().flat_map(|(_, d)| &d.shadowed).map(|(rule, _)| rule.as_str()).collect();
        let shadow_ok = self.expect.shadow.as_deref().is_none_or(|want| shadowed.contains(&want));
        if reply_ok && stage_ok && rule_ok && shadow_ok {
            Ok(outcome)
        } else {
            let mut want = self.expect.reply.clone();
            if let Some(stage) = self.expect.stage {
                want.push_str(&format!(" at {}", stage.as_str()));
            }
            if let Some(rule) = &self.expect.rule {
                want.push_str(&format!(" (rule {rule})"));
            }
            if let Some(rule) = &self.expect.shadow {
                let seen = if shadowed.is_empty() { "none".to_owned() } else { shadowed.join(", ") };
                want.push_str(&format!(", with shadow rule {rule} reporting a refusal (shadow refusals: {seen})"));
            }
            Err((Some(outcome), want))
        }
    }
}

const TEST_NODES: &[&str] = &[
    "farm",
    "client",
    "helo",
    "from",
    "rcpt",
    "authenticated",
    "user",
    "tls",
    "dnsbl",
    "sender-domain",
    "helo-dns",
    "reverse-dns",
    "greylist",
    "directory",
    "spf",
    "dkim",
    "arc",
    "dmarc",
    "milter",
    "expect",
];

/// Read a test file; problems are reported as diagnostics (same form as policy errors).
pub fn load(path: &Path, diags: &mut Diagnostics) -> Option<TestFile> {
    // Bounded like a policy: a test file that is a link to /dev/zero must not hang CI.
    let text = match crate::files::read_regular(path, crate::files::POLICY_FILE_LIMIT) {
        Ok(t) => t,
        Err(why) => {
            diags.push(Diag::error("mtac::io", format!("cannot read {}: {why}", path.display())));
            return None;
        }
    };
    let source = SourceFile { name: path.display().to_string(), text: Arc::new(text) };
    let doc = match KdlDocument::parse_v2(&source.text) {
        Ok(doc) => doc,
        Err(e) => {
            for d in e.diagnostics {
                diags.push(
                    Diag::error("mtac::kdl::syntax", format!("KDL syntax: {}", d.message.unwrap_or_default())).at(
                        &source,
                        d.span,
                        d.label.unwrap_or_else(|| "here".to_owned()),
                    ),
                );
            }
            return None;
        }
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut policy = None;
    let mut tests = Vec::new();
    for node in doc.nodes() {
        match node.name().value() {
            "policy" => policy = first_string(node).map(|p| dir.join(p)),
            "test" => {
                if let Some(test) = lower_test(node, &source, diags) {
                    tests.push(test);
                }
            }
            other => {
                let help = did_you_mean(other, &["policy", "test"]).map_or_else(
                    || "a test file holds `policy \"FILE\"` and `test \"NAME\" { … }` nodes".to_owned(),
                    |g| format!("did you mean `{g}`?"),
                );
                diags.push(
                    Diag::error("mtac::test::unknown-node", format!("unknown node `{other}`"))
                        .at(&source, node.name().span(), "unknown")
                        .help(help),
                );
            }
        }
    }
    let Some(policy) = policy else {
        diags.push(
            Diag::error("mtac::test::no-policy", "the test file names no policy")
                .at(&source, miette::SourceSpan::new(0.into(), 0), "in this file")
                .help("add `policy \"policy.kdl\"` (relative to the test file)"),
        );
        return None;
    };
    if tests.is_empty() {
        diags.push(Diag::warning("mtac::test::none", format!("{} holds no test", path.display())));
    }
    Some(TestFile { policy, tests })
}

fn first_string(node: &KdlNode) -> Option<String> {
    node.entries().iter().find(|e| e.name().is_none()).and_then(|e| e.value().as_string()).map(str::to_owned)
}

fn strings(node: &KdlNode) -> Vec<String> {
    node.entries()
        .iter()
        .filter(|e| e.name().is_none())
        .filter_map(|e| e.value().as_string())
        .map(str::to_owned)
        .collect()
}

/// `expect rule=` names a rule of [`mtac_ruleset::rules`]: a misspelt name would make the test
/// fail for a reason that has nothing to do with the policy (or, worse, look like a policy bug).
/// A rule the node decides outside the policy (`pregreet`, `scan.virus`…) is a warning: the
/// evaluator never gives it, so the test cannot pass.
fn check_rule_name(rule: &str, child: &KdlNode, source: &SourceFile, diags: &mut Diagnostics) {
    let span = child.entry("rule").map_or_else(|| child.span(), |e| e.span());
    match mtac_ruleset::rules::find(rule) {
        Some(known) if known.set_by != mtac_ruleset::rules::SetBy::Node => {}
        Some(_) => diags.push(
            Diag::warning("mtac::test::node-rule", format!("rule `{rule}` is decided by the node, not the policy"))
                .at(source, span, "never the outcome of a policy test")
                .help("`mtac test` evaluates the policy's rules only; test this one against a running node"),
        ),
        None => {
            let policy_rules = mtac_ruleset::rules::evaluated_rule_names();
            let help = did_you_mean(rule, &policy_rules).map_or_else(
                || format!("rule names (docs/policy.md, \"Rule names\"): {}", policy_rules.join(", ")),
                |g| format!("did you mean `{g}`?"),
            );
            diags.push(
                Diag::error("mtac::test::unknown-rule", format!("unknown rule `{rule}`"))
                    .at(source, span, "no such rule")
                    .help(help),
            );
        }
    }
}

fn lower_test(node: &KdlNode, source: &SourceFile, diags: &mut Diagnostics) -> Option<PolicyTest> {
    let name = first_string(node)?;
    let line = source.line_col(node.span().offset()).0;
    let mut session = Session::default();
    let mut farm = None;
    let mut expect = None;
    let errors_before = diags.errors();
    let bad = |diags: &mut Diagnostics, child: &KdlNode, message: String, help: &str| {
        diags.push(Diag::error("mtac::test::value", message).at(source, child.span(), "invalid").help(help));
    };
    for child in node.children().map(|d| d.nodes()).unwrap_or_default() {
        let values = strings(child);
        let value = values.first().cloned();
        match child.name().value() {
            "farm" => farm = value,
            "client" => match value.as_deref().map(str::parse::<IpAddr>) {
                Some(Ok(ip)) => session.client = ip,
                _ => bad(diags, child, "`client` needs an IP address".to_owned(), "e.g. client \"192.0.2.1\""),
            },
            "helo" => session.helo = value,
            "from" => session.from = value.map(|v| v.trim_start_matches('<').trim_end_matches('>').to_owned()),
            "rcpt" => session.rcpt = value.map(|v| v.trim_start_matches('<').trim_end_matches('>').to_owned()),
            "authenticated" => {
                session.authenticated = child
                    .entries()
                    .iter()
                    .find(|e| e.name().is_none())
                    .is_none_or(|e| e.value() == &KdlValue::Bool(true))
            }
            "user" => match value {
                Some(user) if !user.is_empty() => session.user = Some(user),
                _ => bad(diags, child, "`user` needs the user name".to_owned(), "e.g. user \"alice\""),
            },
            "tls" => {
                session.tls = Some(
                    child
                        .entries()
                        .iter()
                        .find(|e| e.name().is_none())
                        .is_none_or(|e| e.value() == &KdlValue::Bool(true)),
                )
            }
            "dnsbl" => match (values.first(), values.get(1).map(|a| parse_list_answer(a))) {
                (Some(zone), Some(Some(answer))) => session.dns.lists.push((zone.clone(), answer)),
                _ => bad(
                    diags,
                    child,
                    "`dnsbl` needs a zone and its answer".to_owned(),
                    "e.g. dnsbl \"zen.spamhaus.org\" \"127.0.0.2\" (or \"none\", \"error\")",
                ),
            },
            "sender-domain" => match value.as_deref().and_then(parse_domain_status) {
                Some(status) => session.dns.sender_domain = Some(status),
                None => bad(
                    diags,
                    child,
                    "unknown sender-domain status".to_owned(),
                    "resolves, nxdomain, null-mx or tempfail",
                ),
            },
            "helo-dns" => match value.as_deref().and_then(parse_domain_status) {
                Some(status) => session.dns.helo_name = Some(status),
                None => bad(diags, child, "unknown helo-dns status".to_owned(), "resolves, nxdomain or tempfail"),
            },
            "reverse-dns" => match value.as_deref().and_then(parse_reverse) {
                Some(status) => session.dns.reverse = Some(status),
                None => bad(
                    diags,
                    child,
                    "unknown reverse-dns status".to_owned(),
                    "confirmed:NAME, unconfirmed:NAME, none or tempfail",
                ),
            },
            "greylist" => match value.as_deref().and_then(parse_greylist) {
                Some(status) => session.greylist = Some(status),
                None => bad(diags, child, "unknown greylist status".to_owned(), "pass or defer"),
            },
            "directory" => match value.as_deref().and_then(parse_directory) {
                Some(answer) => session.directory = Some(answer),
                None => bad(diags, child, "unknown directory answer".to_owned(), "known, unknown or unavailable"),
            },
            "spf" => match value.as_deref().and_then(SpfResult::parse) {
                Some(result) => session.dns.spf = Some(result),
                None => bad(
                    diags,
                    child,
                    "unknown SPF verdict".to_owned(),
                    "pass, fail, softfail, neutral, none, temperror or permerror",
                ),
            },
            "dkim" => match value.as_deref().and_then(sender_auth::parse_dkim) {
                Some(verdict) => session.message.dkim.push(verdict),
                None => bad(diags, child, "`dkim` needs DOMAIN=RESULT".to_owned(), "e.g. dkim \"example.org=pass\""),
            },
            "arc" => match value.as_deref().and_then(sender_auth::parse_arc) {
                Some(verdict) => session.message.arc = Some(verdict),
                None => bad(
                    diags,
                    child,
                    "`arc` needs RESULT[:SEALER[:DOMAIN]]".to_owned(),
                    "e.g. arc \"pass:lists.example:bank.example\"",
                ),
            },
            "dmarc" => match value.as_deref().and_then(|v| sender_auth::parse_dmarc(v, session.from.as_deref())) {
                Some(verdict) => session.message.dmarc = Some(verdict),
                None => bad(
                    diags,
                    child,
                    "`dmarc` needs RESULT[:POLICY[:DOMAIN]]".to_owned(),
                    "e.g. dmarc \"fail:reject\" (pass, fail, none, temperror, permerror; none, quarantine, reject)",
                ),
            },
            "milter" => match value.as_deref().and_then(mtac_ruleset::filters::parse_given) {
                Some(given) => session.message.filters.push(given),
                None => bad(
                    diags,
                    child,
                    "`milter` needs NAME=VERDICT[@mail|@rcpt]".to_owned(),
                    "e.g. milter \"opendkim=reject\" (continue, reject, tempfail, discard, quarantine, unavailable, unsupported) or milter \"m=reject@rcpt\"",
                ),
            },
            "expect" => {
                let stage = child.get("stage").and_then(|v| v.as_string()).map(Stage::parse);
                if let Some(None) = stage {
                    bad(diags, child, "unknown stage".to_owned(), "connect, helo, mail, rcpt or data");
                }
                let rule = child.get("rule").and_then(|v| v.as_string()).map(str::to_owned);
                let shadow = child.get("shadow").and_then(|v| v.as_string()).map(str::to_owned);
                for name in rule.iter().chain(&shadow) {
                    check_rule_name(name, child, source, diags);
                }
                match value {
                    Some(reply) => expect = Some(Expectation { reply, stage: stage.flatten(), rule, shadow }),
                    None => bad(
                        diags,
                        child,
                        "`expect` needs a reply".to_owned(),
                        "e.g. expect \"550 5.7.1\" or expect \"accept\"",
                    ),
                }
            }
            other => {
                let help = did_you_mean(other, TEST_NODES).map_or_else(
                    || format!("a test may contain: {}", TEST_NODES.join(", ")),
                    |g| format!("did you mean `{g}`?"),
                );
                diags.push(
                    Diag::error("mtac::test::unknown-node", format!("unknown node `{other}` in test `{name}`"))
                        .at(source, child.name().span(), "unknown")
                        .help(help),
                );
            }
        }
    }
    let Some(expect) = expect else {
        diags.push(
            Diag::error("mtac::test::no-expect", format!("test `{name}` expects nothing"))
                .at(source, node.span(), "no expect")
                .help("add e.g. expect \"550 5.7.1\" stage=\"rcpt\", or expect \"accept\""),
        );
        return None;
    };
    if diags.errors() > errors_before {
        return None;
    }
    Some(PolicyTest { name, line, farm, session, expect })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> (Option<TestFile>, Diagnostics) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mx.test.kdl");
        std::fs::write(&path, text).unwrap();
        let mut diags = Diagnostics::default();
        let file = load(&path, &mut diags);
        (file, diags)
    }

    /// Issue 15: `rule="recipient.unknwon"` used to be read as written, so the test failed with
    /// "expected … (rule recipient.unknwon)" against a policy that did exactly what was meant.
    #[test]
    fn issue_15_an_unknown_rule_name_is_an_error_with_a_suggestion() {
        let (file, diags) = load_text(
            r#"policy "mx.kdl"
test "unknown user" {
    rcpt "nobody@example.com"
    expect "550 5.1.1" stage="rcpt" rule="recipient.unknwon"
}
"#,
        );
        let errors: Vec<&Diag> = diags.list.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errors.len(), 1, "{:?}", diags.list);
        assert_eq!(errors[0].code, "mtac::test::unknown-rule");
        assert_eq!(errors[0].help.as_deref(), Some("did you mean `recipient.unknown`?"));
        assert!(file.unwrap().tests.is_empty(), "a test with an error is not run");
    }

    #[test]
    fn issue_15_known_rule_names_pass_and_node_rules_are_flagged() {
        let (file, diags) = load_text(
            r#"policy "mx.kdl"
test "reverse dns" {
    rcpt "a@example.com"
    expect "550" rule="client.reverse-dns"
}
test "sender" {
    from "x@example.org"
    expect "553" rule="auth.sender"
}
test "virus" {
    from "x@example.org"
    expect "554" rule="scan.virus"
}
"#,
        );
        assert!(!diags.has_errors(), "{:?}", diags.list);
        // auth.sender is the evaluator's (a session rule): only the node's scan.virus is flagged.
        let warnings: Vec<&str> = diags.list.iter().map(|d| d.code).collect();
        assert_eq!(warnings, ["mtac::test::node-rule"]);
        assert_eq!(file.unwrap().tests.len(), 3);
    }
}
