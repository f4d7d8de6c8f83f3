//! Whole sessions driven line by line, with no socket: the state machine alone. The first tests
//! are about the protocol (order, limits); those after "results returned" show the API: each
//! refusal's rule comes back with the action that refuses, and each round trip is an action
//! whose answer goes back through the method it names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use super::*;
use crate::smtp::{parse, Reply};
use mtac_ruleset::eval::{DirectoryAnswer, DomainStatus, ReverseDns};
use mtac_ruleset::model::*;
use mtac_ruleset::tables::DomainTableBuilder;
use mtac_ruleset::TableInput;

fn step(rule: &str, check: Check, code: u16, status: &str, text: &str) -> Step {
    Step { rule: rule.to_owned(), check, reply: model::Reply::new(code, status, text), shadow: false }
}

/// One inbound farm for `example.com` whose RCPT program is relay control, changed by `edit`.
fn ruleset_with(errors: u32, edit: impl FnOnce(&mut Farm)) -> Ruleset {
    let relay = step("relay", Check::RelayControl, 554, "5.7.1", "Relay access denied");
    let mut farm = Farm {
        name: "mx".to_owned(),
        kind: FarmKind::InboundMx,
        listeners: vec![Listener {
            address: "127.0.0.1:0".parse().unwrap(),
            implicit_tls: false,
            proxy_from: Vec::new(),
        }],
        limits: Limits {
            connections: 10,
            connections_per_ip: 10,
            transfers_per_ip: 5,
            message_size: 1000,
            recipients: 2,
            line_length: 512,
            errors,
            soft_errors: errors,
            timeouts: Timeouts { command: 300, data: 600, relay: 60, pregreet: 0 },
        },
        trust_loopback: false,
        local_domains: Some(0),
        local_addresses: None,
        role_accounts: vec![],
        access: None,
        access_actions: vec![],
        relay_clients: None,
        program: Program { rcpt: vec![relay], ..Program::default() },
        dnsbl: None,
        bans: vec![],
        greylist: None,
        scanners: vec![],
        scan_max_size: 0,
        scan_oversize_refuse: false,
        verdict_headers: model::VerdictHeaders { names: vec![], authserv_ids: vec![], rename: false },
        mime: None,
        filters: Vec::new(),
        relay: model::Relay::Maildir("/nonexistent".to_owned()),
        tls: None,
        auth: None,
        dkim_sign: None,
        directory: None,
        bare_line_ends: BarePolicy::Reject,
        ban_response: BanResponse::Close521,
        rate_limits: vec![],
        tarpit_ms: 0,
        screen: model::Screen {
            pregreet_remember: 0,
            pregreet_talker: model::TalkerAction::Close,
            pipelining: None,
            stress: None,
        },
        sender_auth: Default::default(),
        recipient_domains: Default::default(),
    };
    edit(&mut farm);
    let policy = Policy {
        hostname: "mx.example.net".to_owned(),
        banner: "ESMTP".to_owned(),
        spool: "/tmp".to_owned(),
        spool_max_bytes: None,
        farms: vec![farm],
        tables: vec![TableInfo { kind: TableKind::Domains, name: "d".to_owned(), entries: 1, sources: vec![] }],
        dns: DnsSettings::default(),
        admin: None,
        admin_socket: None,
        state: Default::default(),
        journal: None,
    };
    let mut domains = DomainTableBuilder::new();
    domains.insert("example.com", false, 0).unwrap();
    Ruleset::from_vec(mtac_ruleset::build(&policy, vec![TableInput::Domains(domains)]).unwrap()).unwrap()
}

pub(crate) fn ruleset(errors: u32) -> Ruleset {
    ruleset_with(errors, |_| {})
}

fn session(rs: &Ruleset) -> Session {
    Session::new("T".into(), "192.0.2.1:1000".parse().unwrap(), rs, &rs.policy().farms[0])
}

fn feed(session: &mut Session, ruleset: &Ruleset, line: &str) -> Action {
    let farm = &ruleset.policy().farms[0];
    match parse(line.as_bytes()) {
        Ok(command) => session.command(command, ruleset, farm),
        Err(e) => session.parse_error(&e),
    }
}

fn code(action: &Action) -> u16 {
    match action {
        Action::Reply { reply, .. } | Action::Close { reply, .. } | Action::StartTls(reply) => reply.code(),
        Action::Recipient { .. } => 1,
        Action::Greylist { .. } => 2,
        Action::Authenticate { .. } => 3,
        Action::Directory { .. } => 4,
        Action::Data => 354,
        Action::Chunks { .. } => 5,
    }
}

/// The rule an action refuses by, and whether `ban after=` may count it.
fn refused_by(action: &Action) -> Option<(&str, bool)> {
    action.refusal().map(|r| (r.rule.as_str(), r.may_ban))
}

#[test]
fn a_transaction_goes_through_the_stages_in_order() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    assert_eq!(code(&s.greet(&rs, &rs.policy().farms[0])), 220);
    assert_eq!(code(&feed(&mut s, &rs, "EHLO a.example.org")), 250);
    assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<b@example.com>")), 503);
    assert_eq!(code(&feed(&mut s, &rs, "MAIL FROM:<a@example.org> SIZE=5000")), 552);
    assert_eq!(code(&feed(&mut s, &rs, "MAIL FROM:<a@example.org>")), 250);
    assert_eq!(code(&feed(&mut s, &rs, "DATA")), 554, "no recipient yet");
    assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), Action::Recipient { address: "b@example.com".into() });
    assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<c@elsewhere.example>")), 554);
    assert_eq!(s.last_rule(), Some("relay"));
    assert_eq!(code(&s.recipient_result("b@example.com".into(), Ok(()))), 250);
    assert_eq!(feed(&mut s, &rs, "DATA"), Action::Data);
    assert_eq!(code(&s.message_answered(Reply::ok())), 250);
    assert_eq!(s.accepted(), 1);
    assert_eq!(code(&feed(&mut s, &rs, "DATA")), 503, "the transaction ended");
    assert_eq!(code(&feed(&mut s, &rs, "QUIT")), 221);
}

/// Issue 18: BDAT is DATA's twin: refused before MAIL and before a recipient, handed to the
/// driver with its size afterwards.
#[test]
fn issue18_bdat_needs_a_transaction_with_a_recipient() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    s.greet(&rs, &rs.policy().farms[0]);
    feed(&mut s, &rs, "EHLO a.example.org");
    assert_eq!(code(&feed(&mut s, &rs, "BDAT 10 LAST")), 503);
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    assert_eq!(code(&feed(&mut s, &rs, "BDAT 10")), 554, "no recipient yet");
    feed(&mut s, &rs, "RCPT TO:<b@example.com>");
    s.recipient_result("b@example.com".into(), Ok(()));
    assert_eq!(feed(&mut s, &rs, "BDAT 10 LAST"), Action::Chunks { size: 10, last: true });
}

#[test]
fn the_recipient_limit_counts_accepted_recipients() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    feed(&mut s, &rs, "EHLO a.example.org");
    feed(&mut s, &rs, "MAIL FROM:<>");
    for n in 0..2 {
        let address = format!("r{n}@example.com");
        assert_eq!(feed(&mut s, &rs, &format!("RCPT TO:<{address}>")), Action::Recipient { address: address.clone() });
        s.recipient_result(address, Ok(()));
    }
    assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<r3@example.com>")), 452);
}

#[test]
fn the_error_limit_closes_with_421() {
    let rs = ruleset(3);
    let mut s = session(&rs);
    assert_eq!(code(&feed(&mut s, &rs, "FROB")), 500);
    assert_eq!(code(&feed(&mut s, &rs, "DATA")), 503);
    let last = feed(&mut s, &rs, "VRFY x");
    assert_eq!(code(&last), 252, "VRFY's 252 is not an error");
    let last = feed(&mut s, &rs, "EXPN x");
    assert!(matches!(last, Action::Close { ref reply, .. } if reply.code() == 421), "{last:?}");
}

#[test]
fn junk_commands_are_limited_and_overshoot_is_not_an_error() {
    let rs = ruleset(3);
    let mut s = session(&rs);
    feed(&mut s, &rs, "EHLO a.example.org");
    feed(&mut s, &rs, "MAIL FROM:<>");
    for n in 0..2 {
        let address = format!("r{n}@example.com");
        feed(&mut s, &rs, &format!("RCPT TO:<{address}>"));
        s.recipient_result(address, Ok(()));
    }
    for _ in 0..10 {
        assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<more@example.com>")), 452, "452 never ends the session");
    }
    for _ in 0..(JUNK_COMMAND_LIMIT - 1) {
        assert_eq!(code(&feed(&mut s, &rs, "NOOP")), 250);
    }
    let last = feed(&mut s, &rs, "NOOP");
    assert!(matches!(last, Action::Close { ref reply, .. } if reply.code() == 421));
    assert_eq!(refused_by(&last), Some((rules::JUNK_COMMANDS, false)));
}

// ----- results returned: the rule travels with the action -----

#[test]
fn a_relay_refusal_returns_its_rule_with_the_reply() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    feed(&mut s, &rs, "EHLO a.example.org");
    assert_eq!(refused_by(&feed(&mut s, &rs, "MAIL FROM:<a@example.org>")), None, "250 refuses nothing");
    let refused = feed(&mut s, &rs, "RCPT TO:<c@elsewhere.example>");
    assert!(matches!(refused, Action::Reply { ref reply, .. } if reply.code() == 554), "{refused:?}");
    assert_eq!(refused_by(&refused), Some(("relay", true)), "a permanent policy refusal may ban");
    let protocol = feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    assert_eq!((code(&protocol), refused_by(&protocol)), (503, None), "a protocol error has no rule");
    assert_eq!(s.last_rule(), Some("relay"), "the closing line keeps the last rule");
}

#[test]
fn the_421_at_the_error_limit_carries_the_refusal_that_reached_it() {
    let rs = ruleset(2);
    let mut s = session(&rs);
    feed(&mut s, &rs, "FROB");
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    let last = feed(&mut s, &rs, "RCPT TO:<c@elsewhere.example>");
    assert!(matches!(last, Action::Close { ref reply, .. } if reply.code() == 421), "{last:?}");
    assert_eq!(refused_by(&last), Some(("relay", true)), "logged and banned as the relay refusal it was");
}

#[test]
fn a_transient_policy_refusal_never_bans() {
    let rs = ruleset_with(10, |farm| {
        farm.program.rcpt =
            vec![step("client.reverse-dns", Check::ClientReverseDns { confirmed: true }, 550, "5.7.25", "no")];
    });
    let mut s = session(&rs);
    s.dns_answered([DnsUpdate::Reverse(ReverseDns::TempFail)]);
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    let deferred = feed(&mut s, &rs, "RCPT TO:<b@example.com>");
    assert_eq!((code(&deferred), refused_by(&deferred)), (450, Some(("client.reverse-dns", false))));
    s.dns_answered([DnsUpdate::Reverse(ReverseDns::None)]);
    let refused = feed(&mut s, &rs, "RCPT TO:<b@example.com>");
    assert_eq!((code(&refused), refused_by(&refused)), (550, Some(("client.reverse-dns", true))));
}

#[test]
fn a_refused_greeting_carries_its_rule_and_a_deferred_one_closes() {
    let connect = |code, status| {
        move |farm: &mut Farm| {
            farm.program.connect = vec![step("auth.required", Check::AuthRequired, code, status, "no")]
        }
    };
    let rs = ruleset_with(10, connect(554, "5.7.1"));
    let mut s = session(&rs);
    let greeting = s.greet(&rs, &rs.policy().farms[0]);
    assert!(matches!(greeting, Action::Reply { ref reply, .. } if reply.code() == 554), "{greeting:?}");
    assert_eq!(refused_by(&greeting), Some(("auth.required", true)), "the ban is the greeting's to make");
    let after = feed(&mut s, &rs, "EHLO a.example.org");
    assert_eq!((code(&after), refused_by(&after)), (503, None), "the 503s after it refuse by no new rule");

    let rs = ruleset_with(10, connect(450, "4.7.1"));
    let greeting = session(&rs).greet(&rs, &rs.policy().farms[0]);
    assert!(matches!(greeting, Action::Close { ref reply, .. } if reply.code() == 421), "{greeting:?}");
    assert_eq!(refused_by(&greeting), Some(("auth.required", false)));
}

#[test]
fn a_client_let_in_banned_is_refused_at_rcpt_by_the_ban_rule() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    s.banned_at_connect();
    assert!(s.is_banned());
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    let refused = feed(&mut s, &rs, "RCPT TO:<b@example.com>");
    assert_eq!((code(&refused), refused_by(&refused)), (550, Some((rules::BAN, false))));
}

#[test]
fn an_early_talker_is_closed_with_the_pregreet_rule() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    let closed = s.talked_early();
    assert!(matches!(closed, Action::Close { ref reply, .. } if reply.code() == 554), "{closed:?}");
    assert_eq!(refused_by(&closed), Some((rules::PREGREET, false)));
    assert_eq!(s.last_rule(), Some(rules::PREGREET));
}

#[test]
fn a_failed_auth_returns_the_auth_rule_and_the_last_one_closes() {
    let rs = ruleset_with(10, |farm| {
        farm.auth = Some(Auth {
            mechanisms: vec!["PLAIN".to_owned()],
            backend: AuthBackend::Table(vec![]),
            max_failures: 2,
            cache_ttl: 0,
            sender_aliases: vec![],
            header_from_owned: false,
            null_sender: false,
            unknown_user_cost: Default::default(),
        })
    });
    let mut s = session(&rs);
    assert_eq!(code(&feed(&mut s, &rs, "AUTH PLAIN AGFsaWNlAHNlY3JldA==")), 538, "never in clear text");
    s.tls_started("TLS1.3".to_owned());
    let asked = feed(&mut s, &rs, "AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    assert_eq!(asked, Action::Authenticate { user: "alice".into(), password: "secret".into() });
    let failed = s.auth_result("alice".into(), AuthVerdict::Invalid);
    assert_eq!((code(&failed), refused_by(&failed)), (535, Some((rules::AUTH, false))));
    let down = s.auth_result("alice".into(), AuthVerdict::Unavailable);
    assert_eq!((code(&down), refused_by(&down)), (454, Some((rules::AUTH_UNAVAILABLE, false))));
    let last = s.auth_result("alice".into(), AuthVerdict::Invalid);
    assert!(matches!(last, Action::Close { ref reply, .. } if reply.code() == 421), "{last:?}");
    assert_eq!(refused_by(&last), Some((rules::AUTH, false)));
    let locked = s.auth_locked_out();
    assert_eq!((code(&locked), refused_by(&locked)), (421, Some((rules::AUTH, false))));
    assert_eq!(s.authenticated(), None);
    assert_eq!(code(&s.auth_result("alice".into(), AuthVerdict::Valid)), 235);
    assert_eq!(s.authenticated(), Some("alice"));
}

#[test]
fn the_directory_is_asked_by_an_action_and_its_answer_decides() {
    let rs = ruleset_with(10, |farm| {
        farm.directory = Some(Directory {
            url: "ldap://127.0.0.1:1".to_owned(),
            base: "dc=example".to_owned(),
            filter: "(mail={address})".to_owned(),
            attributes: vec!["mail".to_owned()],
            bind_dn: None,
            bind_password_file: None,
            timeout_ms: 100,
            pool: 1,
            positive_ttl: 0,
            negative_ttl: 0,
            cache_size: 0,
            lookups: true,
            exported: 0,
        });
        let directory = step(rules::RECIPIENT_DIRECTORY, Check::RecipientDirectory, 550, "5.1.1", "unknown");
        farm.program.rcpt.push(directory);
    });
    let farm = &rs.policy().farms[0];
    let mut s = session(&rs);
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    let ask = Action::Directory { address: "b@example.com".into() };
    assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), ask);
    let unknown = s.directory_result(&rs, farm, "b@example.com".into(), DirectoryAnswer::Unknown);
    assert_eq!((code(&unknown), refused_by(&unknown)), (550, Some((rules::RECIPIENT_DIRECTORY, true))));
    assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), ask, "the answer served one RCPT only");
    let down = s.directory_result(&rs, farm, "b@example.com".into(), DirectoryAnswer::Unavailable);
    assert_eq!((code(&down), refused_by(&down)), (451, Some((rules::RECIPIENT_DIRECTORY, false))));
    let known = s.directory_result(&rs, farm, "b@example.com".into(), DirectoryAnswer::Known);
    assert_eq!(known, Action::Recipient { address: "b@example.com".into() });
}

#[test]
fn greylisting_is_an_action_and_a_pass_remembers_the_client() {
    let rs = ruleset_with(10, |farm| {
        farm.greylist = Some(Greylist {
            key: GreylistKey::Network,
            delay: 60,
            retry_window: 3600,
            lifetime: 86400,
            v4_prefix: 24,
            v6_prefix: 64,
            auto_whitelist: 0,
            whitelist_clients: None,
            whitelist_senders: None,
            whitelist_recipients: None,
            reply: model::Reply::new(451, "4.7.1", "Greylisted"),
        });
        farm.program.rcpt.push(step(rules::GREYLIST, Check::Greylist, 451, "4.7.1", "Greylisted"));
    });
    let mut s = session(&rs);
    feed(&mut s, &rs, "MAIL FROM:<a@example.org>");
    let ask = Action::Greylist { address: "b@example.com".into() };
    assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), ask);
    let deferred = s.greylist_result("b@example.com".into(), GreylistAnswer::Refuse(Reply::local_error()));
    assert_eq!(refused_by(&deferred), Some((rules::GREYLIST, false)), "the store's answer never bans");
    assert_eq!(s.greylist_client(), None);
    assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), ask);
    let client = Some("net:192.0.2.0/24".to_owned());
    let passed = s.greylist_result("b@example.com".into(), GreylistAnswer::Pass { client });
    assert_eq!(passed, Action::Recipient { address: "b@example.com".into() });
    assert_eq!(s.greylist_client(), Some("net:192.0.2.0/24"));
}

#[test]
fn dns_answers_reach_the_evaluator_and_a_new_helo_forgets_the_old_ones() {
    let rs = ruleset_with(10, |farm| {
        farm.program.helo = vec![step(rules::HELO_RESOLVABLE, Check::HeloResolvable, 550, "5.7.1", "unknown")];
    });
    let mut s = session(&rs);
    s.dns_answered([DnsUpdate::HeloName(Some(DomainStatus::NoRecords))]);
    let refused = feed(&mut s, &rs, "EHLO ghost.example.org");
    assert_eq!((code(&refused), refused_by(&refused)), (550, Some((rules::HELO_RESOLVABLE, true))));
    assert_eq!(s.helo(), None, "a refused name is not the session's");
    s.dns_answered([DnsUpdate::HeloChanged { zones: vec![] }]);
    assert_eq!(s.dns().helo_name, None);
    assert_eq!(code(&feed(&mut s, &rs, "EHLO mx.example.org")), 250, "a name not looked up is assumed to resolve");
    assert_eq!(s.helo(), Some("mx.example.org"));
}

/// Issue 15: the session is one room per concern, none of them a hub again.
#[test]
fn issue15_session_rooms_stay_small() {
    const MAX_LINES: usize = 600;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines <= MAX_LINES, "{} has {lines} lines (at most {MAX_LINES})", path.display());
    }
    assert!(!dir.with_extension("rs").exists(), "session.rs is back beside session/");
}

#[test]
fn issue17_pipelining_groups_end_where_rfc_2920_says() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    let cmd = |line: &str| parse(line.as_bytes()).unwrap();
    // Before EHLO (and after HELO) PIPELINING was never offered: every command ends a group.
    assert!(s.must_end_group(&cmd("MAIL FROM:<a@example.net>")));
    assert!(!s.must_end_group(&cmd("QUIT")), "nothing after QUIT is read");
    feed(&mut s, &rs, "HELO client.example.net");
    assert!(s.must_end_group(&cmd("RCPT TO:<b@example.test>")));
    feed(&mut s, &rs, "EHLO client.example.net");
    for grouped in ["MAIL FROM:<a@example.net>", "RCPT TO:<b@example.test>", "RSET"] {
        assert!(!s.must_end_group(&cmd(grouped)), "{grouped}");
    }
    for last in ["DATA", "EHLO x.example", "NOOP", "VRFY b"] {
        assert!(s.must_end_group(&cmd(last)), "{last}");
    }
    let closed = s.improper_pipelining(&model::Reply::new(554, "5.5.0", "Error: improper command pipelining"));
    assert!(matches!(closed, Action::Close { ref reply, .. } if reply.code() == 554), "{closed:?}");
    assert_eq!(refused_by(&closed), Some((rules::PIPELINING, false)));
}

#[test]
fn issue17_errors_past_the_soft_limit_wait_longer_and_delivery_resets_the_count() {
    let rs = ruleset_with(20, |farm| farm.limits.soft_errors = 2);
    let mut s = session(&rs);
    let mut delays = Vec::new();
    for _ in 0..7 {
        assert_eq!(code(&feed(&mut s, &rs, "FROB")), 500);
        delays.push(s.error_delay_seconds());
    }
    assert_eq!(delays, [0, 0, 1, 2, 3, 3, 3], "growing, bounded by {MAX_ERROR_DELAY_SECONDS} s");
    feed(&mut s, &rs, "EHLO client.example.net");
    feed(&mut s, &rs, "MAIL FROM:<a@example.net>");
    let delivered = s.message_answered(Reply::ok());
    assert_eq!(code(&delivered), 250);
    assert_eq!(s.error_delay_seconds(), 0, "a delivered message starts the count again");
}

#[test]
fn issue17_a_session_under_stress_closes_at_the_stress_error_limit() {
    let rs = ruleset(20);
    let mut s = session(&rs);
    s.under_stress(&model::Stress { percent: 80, command_timeout: 10, data_timeout: 60, errors: 1 });
    assert_eq!(s.limits().timeouts.command, 10);
    let first = feed(&mut s, &rs, "FROB");
    assert!(matches!(first, Action::Close { ref reply, .. } if reply.code() == 421), "{first:?}");
}

#[test]
fn issue17_an_early_talker_let_on_is_refused_at_rcpt() {
    let rs = ruleset(10);
    let mut s = session(&rs);
    s.talked_early_refuse_recipients();
    feed(&mut s, &rs, "EHLO client.example.net");
    feed(&mut s, &rs, "MAIL FROM:<a@example.net>");
    let refused = feed(&mut s, &rs, "RCPT TO:<b@example.test>");
    assert_eq!(code(&refused), 550);
    assert_eq!(refused_by(&refused), Some((rules::PREGREET, false)));
}
