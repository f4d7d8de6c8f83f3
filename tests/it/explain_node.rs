//! Issue 15, item 4: `explain` = node, proven. One table of scripted sessions is run twice: in
//! raw SMTP against a real node on 127.0.0.1:0 (clients on their own loopback addresses, STARTTLS
//! and AUTH PLAIN where the script says so), and through `policytest::run_session`, the
//! simulation behind `mtac explain` and `mtac test`, on the ruleset compiled from the same policy
//! file. Every session must end the same way in both: the same stage, reply code, enhanced code
//! and text, or accepted in both.

use crate::dnsbl::dns_server;

use crate::submission::{b64, certificate, connector, phc, policy as submission_policy, Smtp};
use crate::support::{code, Behaviour, Sink, TestNode};
use mtac_compiler::policytest::{run_session, Session};
use mtac_ruleset::model::Stage;
use rustls_pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};

/// One scripted session: who connects, what it says, with which TLS and AUTH, and how the
/// session must end (`accept`, or the start of the refusal: `553 5.7.1`), so that the node and
/// `explain` cannot agree by both being wrong.
#[derive(Clone, Copy)]
struct Script {
    name: &'static str,
    client: &'static str,
    helo: Option<&'static str>,
    /// STARTTLS before the script's EHLO.
    tls: bool,
    /// AUTH PLAIN as this user (password `correct horse`) after the EHLO.
    user: Option<&'static str>,
    from: Option<&'static str>,
    rcpt: Option<&'static str>,
    /// The SPF verdict the node's check finds (its DNS zone says so), given to `explain`.
    spf: Option<&'static str>,
    /// A DNS list that names the sender's domain (zone, answer), as the node's zone does.
    listed: Option<(&'static str, &'static str)>,
    expect: &'static str,
}

/// How a session ended: refused at a stage with a reply's first line, or accepted.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Refused(Stage, String),
    Accepted,
}

const MX: &str = r#"hostname "mx.test.example"
spool "{dir}/spool"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.test"
    local-addresses "john@example.test" "jane@example.test"
    role-accounts "postmaster" "abuse"
    relay-clients "127.0.0.20/32"
    access {
        accept "127.0.0.77/32"
        reject "127.0.0.66/32"
        defer "127.0.0.67/32"
    }
    helo required=#true syntax=#true fqdn=#true not-ours=#true stage="helo"
    sender fqdn=#true {
        deny "spam.example"
    }
    relay {
        backend "smtp://{backend}"
    }
}
"#;

/// An inbound-mx session from `client`: EHLO `helo` (none if empty), MAIL FROM `from` (none if
/// `None`), RCPT TO `rcpt` (none if empty).
const fn mx(
    name: &'static str,
    client: &'static str,
    helo: &'static str,
    from: Option<&'static str>,
    rcpt: &'static str,
    expect: &'static str,
) -> Script {
    let helo = if helo.is_empty() { None } else { Some(helo) };
    let rcpt = if rcpt.is_empty() { None } else { Some(rcpt) };
    Script { name, client, helo, tls: false, user: None, from, rcpt, spf: None, listed: None, expect }
}

const ALICE: Option<&str> = Some("alice@example.org");
const MX_SCRIPTS: &[Script] = &[
    mx("a known user gets mail", "127.0.0.10", "mail.example.org", ALICE, "john@example.test", "accept"),
    mx("an unknown user is refused", "127.0.0.10", "mail.example.org", ALICE, "nobody@example.test", "550 5.1.1"),
    mx("the farm is not a relay", "127.0.0.10", "mail.example.org", ALICE, "victim@elsewhere.example", "554 5.7.1"),
    mx("a relay client relays", "127.0.0.20", "app.example.org", ALICE, "victim@elsewhere.example", "accept"),
    mx("a rejected client is refused", "127.0.0.66", "mail.example.org", ALICE, "john@example.test", "554 5.7.1"),
    mx("a rejected client reaches abuse@", "127.0.0.66", "mail.example.org", ALICE, "abuse@example.test", "accept"),
    mx("a rejected client reaches <postmaster>", "127.0.0.66", "mail.example.org", ALICE, "postmaster", "accept"),
    mx("a deferred client is told to retry", "127.0.0.67", "mail.example.org", ALICE, "john@example.test", "450 4.7.1"),
    mx("a trusted client skips the HELO checks", "127.0.0.77", "localhost", ALICE, "jane@example.test", "accept"),
    mx("a HELO name that is not fully qualified", "127.0.0.10", "localhost", None, "", "504 5.5.2"),
    mx("a HELO name that is ours", "127.0.0.10", "mx.test.example", None, "", "550 5.7.1"),
    mx("a HELO name that is no host name", "127.0.0.10", "bad_name", None, "", "501 5.5.2"),
    mx("MAIL before HELO", "127.0.0.10", "", ALICE, "", "503 5.5.1"),
    mx(
        "an unqualified sender domain",
        "127.0.0.10",
        "mail.example.org",
        Some("a@localhost"),
        "john@example.test",
        "504 5.5.2",
    ),
    mx(
        "a denied sender domain",
        "127.0.0.10",
        "mail.example.org",
        Some("x@spam.example"),
        "john@example.test",
        "550 5.7.1",
    ),
    mx("a bounce to a known user", "127.0.0.10", "mail.example.org", Some(""), "jane@example.test", "accept"),
];

/// The MX farm refusing and deferring clients at connect, where the refusal is the greeting.
const MX_AT_CONNECT: &str = r#"hostname "mx.test.example"
spool "{dir}/spool"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.test"
    access stage="connect" {
        reject "127.0.0.66/32" reply="550 5.7.1 Go away"
        defer "127.0.0.67/32"
    }
    relay {
        backend "smtp://{backend}"
    }
}
"#;

// Issue 15: `explain` showed the policy's own reply at connect, which the node never sends.
const CONNECT_SCRIPTS: &[Script] = &[
    mx("a refused client is refused by the greeting", "127.0.0.66", "", None, "", "554 5.7.1 mx.test.example Go away"),
    mx("a deferred client gets a 421 greeting", "127.0.0.67", "", None, "", "421 4.7.0 mx.test.example"),
    mx("anyone else is greeted", "127.0.0.10", "mail.example.org", ALICE, "postmaster", "accept"),
];

/// A submission session from 127.0.0.1, in TLS or not, authenticated as `user` or not.
const fn sub(
    name: &'static str,
    tls: bool,
    user: Option<&'static str>,
    from: &'static str,
    expect: &'static str,
) -> Script {
    Script {
        name,
        client: "127.0.0.1",
        helo: Some("laptop.example.org"),
        tls,
        user,
        from: Some(from),
        rcpt: Some("friend@elsewhere.example"),
        spf: None,
        listed: None,
        expect,
    }
}

const SUBMISSION_SCRIPTS: &[Script] = &[
    sub("no MAIL before TLS", false, None, "alice@example.test", "530 5.7.0"),
    sub("no relay without AUTH", true, None, "alice@example.test", "530 5.7.0"),
    sub("a user sends as herself", true, Some("alice"), "alice@example.test", "accept"),
    sub("a user sends as an address she was given", true, Some("alice"), "sales@example.test", "accept"),
    // Issue 15: `explain` could not say who logged in, and answered "accept" to these.
    sub("a user cannot send as a colleague", true, Some("alice"), "bob@example.test", "553 5.7.1"),
    sub("a user cannot send as someone elsewhere", true, Some("alice"), "alice@elsewhere.example", "553 5.7.1"),
    sub("the null sender after AUTH", true, Some("alice"), "", "553 5.7.1"),
];

/// Issue 16: the SPF decision at MAIL FROM, against a DNS zone on loopback: good.test lets
/// 127.0.0.10 send (`-all`), soft.test asks only for `~all`.
const MX_SPF: &str = r#"hostname "mx.test.example"
dns timeout="1s" {
    nameserver "{nameserver}"
}
spool "{dir}/spool"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.test"
    access {
        accept "127.0.0.77/32"
    }
    spf fail="refuse" temperror="defer"
    relay {
        backend "smtp://{backend}"
    }
}
"#;

/// A session from `client` sending as `from`, whose SPF verdict is `spf`.
const fn spf(
    name: &'static str,
    client: &'static str,
    from: &'static str,
    spf: &'static str,
    expect: &'static str,
) -> Script {
    Script {
        name,
        client,
        helo: Some("mail.example.org"),
        tls: false,
        user: None,
        from: Some(from),
        rcpt: Some("john@example.test"),
        spf: Some(spf),
        listed: None,
        expect,
    }
}

const SPF_SCRIPTS: &[Script] = &[
    spf("SPF passes", "127.0.0.10", "a@good.test", "pass", "accept"),
    spf("SPF fails: refused at MAIL FROM", "127.0.0.11", "a@good.test", "fail", "550 5.7.23"),
    spf("SPF softfails: recorded only", "127.0.0.11", "a@soft.test", "softfail", "accept"),
    spf("no SPF record", "127.0.0.11", "a@nospf.test", "none", "accept"),
    spf("a trusted client skips SPF", "127.0.0.77", "a@good.test", "fail", "accept"),
];

/// Issue 16: an allow-list entry that cannot be forged. good.test is exempt from greylisting only
/// when SPF passed for it (`verified=#true`); SPF failures are recorded, not refused, so the
/// greylist step is what decides.
const MX_GREY_VERIFIED: &str = r#"hostname "mx.test.example"
dns timeout="1s" {
    nameserver "{nameserver}"
}
spool "{dir}/spool"
state "embedded" path="{dir}/state.redb"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.test"
    spf fail="record"
    dnsbl allow-threshold=-1 {
        zone "dwl.test" target="sender-domain" verified=#true {
            answer "127.0.2.[1..3]" weight=-2
            answer "127.0.2.99" weight=1
        }
    }
    greylist delay="1m" retry-window="1h" {
        whitelist-sender-domain "good.test" verified=#true
        whitelist-sender-domain "soft.test"
    }
    relay {
        backend "smtp://{backend}"
    }
}
"#;

const GREY_VERIFIED_SCRIPTS: &[Script] = &[
    spf("a forged allow-listed domain is greylisted", "127.0.0.11", "a@good.test", "fail", "451 4.7.1"),
    spf("the allow-listed domain with SPF pass is not", "127.0.0.10", "b@good.test", "pass", "accept"),
    spf("an unverified entry is honoured whatever SPF says", "127.0.0.11", "c@soft.test", "softfail", "accept"),
    spf("a domain not listed is greylisted despite SPF pass", "127.0.0.10", "d@nospf.test", "none", "451 4.7.1"),
    // A domain allow list (a `sender-domain` zone with negative weights) trusts only verified senders.
    Script {
        listed: Some(("dwl.test", "127.0.2.2")),
        ..spf("a forged DNSWL domain is not trusted", "127.0.0.11", "e@trusted.test", "fail", "451 4.7.1")
    },
    Script {
        listed: Some(("dwl.test", "127.0.2.2")),
        ..spf("the DNSWL domain with SPF pass is trusted", "127.0.0.10", "f@trusted.test", "pass", "accept")
    },
];

/// Run one script against the node.
async fn on_node(addr: SocketAddr, cert: Option<&str>, s: &Script) -> End {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{}:0", s.client).parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut plain = Smtp { stream: BufReader::new(tcp) };
    let greeting = plain.reply().await;
    if code(&greeting) != 220 {
        return End::Refused(Stage::Connect, first_line(&greeting));
    }
    if !s.tls {
        return drive(&mut plain, s).await;
    }
    let r = plain.cmd("EHLO tls.example.org").await;
    assert_eq!(code(&r), 250, "{}: {r}", s.name);
    assert!(plain.cmd("STARTTLS").await.starts_with("220 2.0.0"), "{}", s.name);
    let cert = cert.expect("a TLS script needs the farm's certificate");
    let tls = connector(cert)
        .connect(ServerName::try_from("mx.test.example").unwrap(), plain.stream.into_inner())
        .await
        .unwrap();
    drive(&mut Smtp { stream: BufReader::new(tls) }, s).await
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Smtp<S>, s: &Script) -> End {
    if let Some(helo) = s.helo {
        let r = c.cmd(&format!("EHLO {helo}")).await;
        if code(&r) != 250 {
            return End::Refused(Stage::Helo, first_line(&r));
        }
    }
    if let Some(user) = s.user {
        let r = c.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0{user}\0correct horse")))).await;
        assert!(r.starts_with("235"), "{}: {r}", s.name);
    }
    if let Some(from) = s.from {
        let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
        if code(&r) != 250 {
            return End::Refused(Stage::Mail, first_line(&r));
        }
    }
    let end = match s.rcpt {
        Some(rcpt) => {
            let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            if code(&r) == 250 {
                End::Accepted
            } else {
                End::Refused(Stage::Rcpt, first_line(&r))
            }
        }
        None => End::Accepted,
    };
    c.cmd("QUIT").await;
    end
}

/// Run one script through the simulation `mtac explain` and `mtac test` use.
fn on_explain(node: &TestNode, farm: &str, s: &Script) -> End {
    let compiled = mtac_compiler::compile_path(&node.dir.path().join("policy.kdl"));
    let ruleset = compiled.output.expect("the node's policy compiles").ruleset;
    let farm = ruleset.farm(farm).expect("the farm");
    let session = Session {
        client: s.client.parse::<IpAddr>().unwrap(),
        helo: s.helo.map(str::to_owned),
        from: s.from.map(str::to_owned),
        rcpt: s.rcpt.map(str::to_owned),
        user: s.user.map(str::to_owned),
        tls: Some(s.tls),
        ..Session::default()
    };
    let mut session = session;
    session.dns.spf = s.spf.and_then(mtac_ruleset::eval::SpfResult::parse);
    if let Some((zone, answer)) = s.listed {
        let listed = mtac_ruleset::eval::ListAnswer::Listed(vec![answer.parse().unwrap()]);
        session.dns.lists.push((zone.to_owned(), listed));
    }
    // Every script is the first attempt of its triplet: the node's greylist store answers "new".
    session.greylist = Some(mtac_ruleset::eval::GreylistStatus::Defer);
    let (simulation, outcome) = run_session(&ruleset, farm, &session);
    let last = simulation.stages.last().map(|(_, d)| d);
    assert!(
        !last.is_some_and(|d| d.greylist_pending || d.directory_pending),
        "{}: the simulation still waits for a fact",
        s.name
    );
    match outcome.stage {
        Some(stage) => End::Refused(stage, outcome.reply),
        None => End::Accepted,
    }
}

fn first_line(reply: &str) -> String {
    reply.lines().next().unwrap_or("").to_owned()
}

async fn compare(node: &TestNode, cert: Option<&str>, farm: &str, scripts: &[Script]) -> Vec<String> {
    let mut differences = Vec::new();
    for s in scripts {
        let (seen, explained) = (on_node(node.addr, cert, s).await, on_explain(node, farm, s));
        let as_expected = match &seen {
            End::Accepted => s.expect == "accept",
            End::Refused(_, reply) => s.expect != "accept" && reply.starts_with(s.expect),
        };
        if seen != explained || !as_expected {
            differences.push(format!(
                "{}:\n  expected: {}\n  node:     {seen:?}\n  explain:  {explained:?}",
                s.name, s.expect
            ));
        }
    }
    differences
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_explain_answers_every_scripted_session_as_the_node_does() {
    let sink = Sink::start(Behaviour::default()).await;
    let mx = TestNode::start(MX, Some(sink.addr)).await;
    let mut differences = compare(&mx, None, "mx", MX_SCRIPTS).await;
    let at_connect = TestNode::start(MX_AT_CONNECT, Some(sink.addr)).await;
    differences.extend(compare(&at_connect, None, "mx", CONNECT_SCRIPTS).await);

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let auth = format!(
        r#"auth {{
        user "alice" hash="{}"
        may-send-as "alice" "sales@example.test"
    }}"#,
        phc("correct horse")
    );
    let users = TestNode::start(&submission_policy(&cert, &key, &auth, ""), Some(sink.addr)).await;
    differences.extend(compare(&users, Some(&cert), "users", SUBMISSION_SCRIPTS).await);

    let zone = dns_server::serve(vec![(
        "test.",
        vec![
            ("good".to_owned(), txt("v=spf1 ip4:127.0.0.10 -all")),
            ("soft".to_owned(), txt("v=spf1 ~all")),
            ("nospf".to_owned(), dns_server::a("192.0.2.1")),
            ("trusted".to_owned(), txt("v=spf1 ip4:127.0.0.10 -all")),
            // dwl.test, a domain allow list: its RFC 5782 test point, and trusted.test on it.
            ("test.dwl".to_owned(), dns_server::a("127.0.2.2")),
            ("trusted.test.dwl".to_owned(), dns_server::a("127.0.2.2")),
            // dbl.test, a domain block list: its test point, and listed.test on it.
            ("test.dbl".to_owned(), dns_server::a("127.0.1.2")),
            ("listed.test.dbl".to_owned(), dns_server::a("127.0.1.2")),
        ],
    )])
    .await;
    let with_spf = TestNode::start(&MX_SPF.replace("{nameserver}", &zone.addr.to_string()), Some(sink.addr)).await;
    differences.extend(compare(&with_spf, None, "mx", SPF_SCRIPTS).await);
    let grey =
        TestNode::start(&MX_GREY_VERIFIED.replace("{nameserver}", &zone.addr.to_string()), Some(sink.addr)).await;
    differences.extend(compare(&grey, None, "mx", GREY_VERIFIED_SCRIPTS).await);
    let per_domain =
        TestNode::start(&MX_PER_DOMAIN.replace("{nameserver}", &zone.addr.to_string()), Some(sink.addr)).await;
    differences.extend(compare(&per_domain, None, "mx", PER_DOMAIN_SCRIPTS).await);

    assert!(differences.is_empty(), "explain and the node disagree:\n{}", differences.join("\n"));
}

/// Issue 20: checks changed per recipient domain, decided per recipient at the node as in
/// `explain`: `optout.test` skips greylisting, `strict.test` refuses at any DNS list score.
const MX_PER_DOMAIN: &str = r#"hostname "mx.test.example"
dns timeout="1s" {
    nameserver "{nameserver}"
}
spool "{dir}/spool"
state "embedded" path="{dir}/state.redb"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.test" "optout.test" "strict.test"
    dnsbl threshold=3 {
        zone "dbl.test" target="sender-domain" {
            answer "127.0.1.2" weight=1
            answer "127.0.1.3" weight=3
        }
    }
    greylist delay="1m" retry-window="1h"
    recipient-domain "optout.test" {
        skip "greylist"
    }
    recipient-domain "strict.test" {
        skip "greylist"
        dnsbl threshold=1
    }
    relay {
        backend "smtp://{backend}"
    }
}
"#;

const fn to_domain(name: &'static str, from: &'static str, rcpt: &'static str, expect: &'static str) -> Script {
    let listed = if from.as_bytes()[0] == b'l' { Some(("dbl.test", "127.0.1.2")) } else { None };
    Script { rcpt: Some(rcpt), listed, ..spf(name, "127.0.0.10", from, "none", expect) }
}

const PER_DOMAIN_SCRIPTS: &[Script] = &[
    to_domain(
        "a listed sender (1 < 3) to the farm's domain is greylisted",
        "listed@listed.test",
        "bob@example.test",
        "451 4.7.1",
    ),
    to_domain("the same sender to a domain that skips greylisting", "listed@listed.test", "bob@optout.test", "accept"),
    to_domain("the same sender to the strict domain (1 >= 1)", "listed@listed.test", "bob@strict.test", "554 5.7.1"),
    to_domain("a clean sender to the strict domain", "clean@clean.test", "bob@strict.test", "accept"),
];

fn txt(text: &str) -> hickory_server::proto::rr::RData {
    hickory_server::proto::rr::RData::TXT(hickory_server::proto::rr::rdata::TXT::new(vec![text.to_owned()]))
}
