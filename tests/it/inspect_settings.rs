//! `mtac inspect --settings` (postconf's answer) and `mtac lookup` (postmap -q's), through the
//! binary as an operator runs them: the print is a policy that compiles back to itself, a
//! lookup's exit code says whether a table matched, and lookups and `explain` name the entry
//! that matched with the file and line that wrote it.

use crate::cli::{code, mtac, text};
use std::path::Path;
use std::process::Output;

fn build(policy: &Path, ruleset: &Path) {
    let out = mtac(&["build", policy.to_str().unwrap(), "-o", ruleset.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
}

fn settings(ruleset: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["inspect", ruleset.to_str().unwrap(), "--settings"];
    args.extend_from_slice(extra);
    mtac(&args)
}

/// A submission farm with a setting written in every part of the language it uses, and the
/// top level written out: every one of these is printable, so the print must compile back.
fn submission_policy() -> String {
    let tls = std::fs::canonicalize("examples/company/tls").unwrap();
    format!(
        r#"hostname "smtp.acme.example"
banner "ESMTP"
spool "/run/mtac/spool" max-bytes="256MiB"
dns timeout="1500ms" probe-interval="1m" {{
    nameserver "10.0.0.53" "[2001:db8::53]:5353"
}}
admin "10.0.0.5:9325" socket="/run/mtac/admin.sock"
state "redis" url="redis://10.0.0.9:6379/0" timeout="300ms" on-failure="accept"
farm "users" kind="submission" {{
    listen "0.0.0.0:587"
    listen "0.0.0.0:465" tls="implicit" proxy-from="10.0.0.0/24 10.0.1.7"
    limits {{
        connections 3000
        message-size "40MiB"
        timeout command="2m" relay="90s"
    }}
    trust-loopback
    tls certificate="{cert}" key="{key}"
    auth mechanisms="PLAIN" max-failures=3 cache="5m" null-sender=#true header-from="owned" {{
        user "alice" hash="$argon2id$v=19$m=19456,t=2,p=1$MlYz7ALJaA0HmfhshNc3BA$FuiP6OuusmO2tDsEfbBf25QrDmxGVurHGO6nKbLm9xA"
        may-send-as "alice" "sales@acme.example"
    }}
    ban after="auth.required" duration="1h" network="/24" scope="all-farms"
    rate-limit messages=200 per="1h" network="/24"
    tarpit "1500ms"
    screen {{
        stress at="90%" command="20s"
    }}
    verdict-headers "X-Acme-Verdict" action="rename"
    authserv-id "auth.acme.example"
    mime {{
        forbid-extension "exe" "scr"
        require-header "Date" "From"
    }}
    milter "inet:127.0.0.1:8891" name="opendkim" timeout="10s" fail="open"
    milter "unix:/run/clamav/milter.ctl" quarantine="header"
    hook "http://127.0.0.1:8080/check" name="inhouse" command-timeout="5s"
    relay {{
        backend "smtp://10.0.0.10:587" tls="required" name="mail.acme.example"
        backend "lmtp://10.0.0.11:24" tls="off"
    }}
    bare-line-ends "normalize"
}}
"#,
        cert = tls.join("example-cert.pem").display(),
        key = tls.join("example-key.pem").display(),
    )
}

#[test]
fn the_settings_print_is_a_policy_that_builds_to_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (policy, ruleset) = (dir.path().join("policy.kdl"), dir.path().join("first.mtac"));
    std::fs::write(&policy, submission_policy()).unwrap();
    build(&policy, &ruleset);
    let first = settings(&ruleset, &[]);
    assert_eq!(code(&first), 0, "{}", text(&first.stderr));
    let printed = text(&first.stdout);
    // What was written is printed as written; what was not is filled in and marked.
    assert!(printed.contains("        connections 3000\n"), "{printed}");
    assert!(printed.contains("        recipients 100 // default\n"), "{printed}");
    assert!(printed.contains("timeout command=\"2m\" data=\"10m\" relay=\"90s\" pregreet=\"0s\"\n"), "{printed}");
    assert!(
        printed.contains("state \"redis\" url=\"redis://10.0.0.9:6379/0\" timeout=\"300ms\" on-failure=\"accept\"\n")
    );
    assert!(printed.contains("may-send-as \"alice\" \"sales@acme.example\""), "{printed}");
    assert!(printed.contains("milter \"unix:/run/clamav/milter.ctl\" name=\"milterctl\" connect-timeout=\"10s\" command-timeout=\"30s\" timeout=\"1m\" fail=\"closed\" discard=\"refuse\" quarantine=\"header\" recipients=\"refuse\"\n"), "{printed}");

    let reprinted_policy = dir.path().join("printed.kdl");
    std::fs::write(&reprinted_policy, &printed).unwrap();
    let check = mtac(&["check", reprinted_policy.to_str().unwrap()]);
    assert_eq!(code(&check), 0, "mtac check refuses the print: {}\n{printed}", text(&check.stderr));
    let second_ruleset = dir.path().join("second.mtac");
    build(&reprinted_policy, &second_ruleset);
    let second = settings(&second_ruleset, &[]);
    assert_eq!(text(&second.stdout), printed, "the print of the rebuilt ruleset differs");
}

#[test]
fn settings_name_lists_by_reference_and_select_one_farm() {
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("company.mtac");
    build(Path::new("examples/company/policy.kdl"), &ruleset);
    let out = settings(&ruleset, &["--farm", "mx"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("farm \"mx\" kind=\"inbound-mx\" {"), "{printed}");
    assert!(!printed.contains("farm \"users\""), "--farm mx printed another farm:\n{printed}");
    assert!(
        printed.contains(
            "// local-addresses: table mx.local-addresses (3000 entries, from examples/company/lists/accounts.txt)"
        ),
        "{printed}"
    );
    assert!(printed.contains("    errors 10\n"), "{printed}");
    assert!(printed.contains("    soft-errors 10 // default\n"), "{printed}");

    let unknown = settings(&ruleset, &["--farm", "usres"]);
    assert_eq!(code(&unknown), 2);
    assert!(text(&unknown.stderr).contains("did you mean `users`?"), "{}", text(&unknown.stderr));

    let json = settings(&ruleset, &["--farm", "users", "--format", "json"]);
    assert_eq!(code(&json), 0);
    let model: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    assert_eq!(model["farms"].as_array().unwrap().len(), 1);
    assert_eq!(model["farms"][0]["name"], "users");
    assert_eq!(model["farms"][0]["limits"]["connections_per_ip"], 50);
    assert_eq!(model["hostname"], "mx1.acme.example");
}

#[test]
fn lookup_answers_like_postmap_with_its_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("company.mtac");
    build(Path::new("examples/company/policy.kdl"), &ruleset);
    let r = ruleset.to_str().unwrap();

    // A network of a list file, with the reply its line gives.
    let out = mtac(&["lookup", r, "198.51.100.7"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(answer.starts_with("mx.access\t198.51.100.7\treject 554 5.7.1 Blocked: repeated spam"), "{answer}");
    let line = line_of("examples/company/lists/blocked-networks.txt", "198.51.100.0/24");
    assert!(
        answer
            .trim_end()
            .ends_with(&format!("\t198.51.100.0/24 at examples/company/lists/blocked-networks.txt:{line}")),
        "{answer}"
    );

    // An address: its own table, and its domain in the domain tables of both farms.
    let domain = std::fs::read_to_string("examples/company/lists/domains.txt").unwrap();
    let domain = domain.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap().trim().to_owned();
    let out = mtac(&["lookup", r, &format!("Nobody-Here@{domain}")]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(answer.contains("mx.local-domains\t"), "{answer}");
    assert!(answer.contains("users.local-domains\t"), "{answer}");
    assert!(!answer.contains("mx.local-addresses"), "{answer}");
    let only_mx = text(&mtac(&["lookup", r, "--farm", "mx", &domain]).stdout);
    assert!(only_mx.contains("mx.local-domains") && !only_mx.contains("users."), "{only_mx}");

    // Nothing matched: 1, and nothing printed.
    let out = mtac(&["lookup", r, "--table", "mx.access", "192.0.2.1"]);
    assert_eq!((code(&out), out.stdout.is_empty()), (1, true));
    let out = mtac(&["lookup", r, "nowhere.invalid"]);
    assert_eq!(code(&out), 1);

    // Usage errors: 2, with the closest name.
    let out = mtac(&["lookup", r, "--farm", "mx", "--table", "acess", "192.0.2.1"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("did you mean `mx.access`?"), "{}", text(&out.stderr));
    let out = mtac(&["lookup", r, "--farm", "mz", "192.0.2.1"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("no farm `mz`"), "{}", text(&out.stderr));
    let out = mtac(&["lookup", r, "not a key"]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("is not an IP address, an address or a domain"), "{}", text(&out.stderr));
}

/// The 1-based line of `path` that starts with `entry`.
fn line_of(path: &str, entry: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().position(|l| l.trim_start().starts_with(entry)).map(|i| i + 1).unwrap_or_else(|| panic!("{entry}"))
}

/// `explain` names each table entry its evaluation matched, with the list file's line (or the
/// policy's line for an inline value), from a ruleset's `RULESET.sources` or from a policy
/// compiled in memory; a missing or foreign sources file is said, and the answer stays.
#[test]
fn explain_and_lookup_name_the_entry_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists");
    std::fs::create_dir(&lists).unwrap();
    std::fs::write(lists.join("partners.txt"), "# partners\n\npartner.example\n*.group.example  # and its hosts\n")
        .unwrap();
    std::fs::write(lists.join("blocked.txt"), "203.0.113.0/24\n203.0.113.128/25 550 5.7.1 worse\n").unwrap();
    let policy = dir.path().join("policy.kdl");
    let source = r#"hostname "mx.example.com"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:0"
    local-domains "example.com" file="lists/partners.txt"
    access {
        reject file="lists/blocked.txt"
        reject "198.51.100.0/24"
    }
    relay { backend "smtp://127.0.0.1:2525"; }
}
"#;
    std::fs::write(&policy, source).unwrap();
    let ruleset = dir.path().join("mx.mtac");
    build(&policy, &ruleset);
    let sources = dir.path().join("mx.mtac.sources");
    assert!(sources.exists(), "mtac build wrote no {}", sources.display());
    let lists = lists.display().to_string();
    let policy_name = policy.display().to_string();

    let explain = |target: &[&str], client: &str, rcpt: &str| {
        let mut args = vec!["explain"];
        args.extend_from_slice(target);
        args.extend_from_slice(&["--client-ip", client, "--helo", "mail.sender.example", "--from", "a@sender.example"]);
        args.extend_from_slice(&["--rcpt", rcpt]);
        let out = mtac(&args);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let r = ruleset.to_str().unwrap();
    // The longest prefix, from its file's second line; a subdomain, by the wildcard line 4.
    let shown = explain(&[r], "203.0.113.200", "someone@mx1.group.example");
    assert!(shown.contains("mx.access 203.0.113.200 → reject 550 5.7.1 worse\n"), "{shown}");
    assert!(shown.contains(&format!("entry 203.0.113.128/25 at {lists}/blocked.txt:2\n")), "{shown}");
    assert!(shown.contains("mx.local-domains mx1.group.example → listed\n"), "{shown}");
    assert!(shown.contains(&format!("entry *.group.example at {lists}/partners.txt:4\n")), "{shown}");
    // An inline value: the policy's line. The same from a policy compiled in memory.
    let p = policy.to_str().unwrap();
    for target in [vec![r], vec!["--policy", p]] {
        let shown = explain(&target, "198.51.100.9", "someone@example.com");
        assert!(shown.contains(&format!("entry 198.51.100.0/24 at {policy_name}:7\n")), "{shown}");
        assert!(shown.contains(&format!("entry example.com at {policy_name}:4\n")), "{shown}");
    }
    // Nothing listed: said so.
    let shown = explain(&[r], "192.0.2.1", "someone@elsewhere.example");
    assert!(shown.contains("matched:\n  no table entry matched this session\n"), "{shown}");

    // lookup answers the same entry.
    let out = mtac(&["lookup", r, "203.0.113.7"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("mx.access\t203.0.113.7\treject 554 5.7.1 Client host rejected: Access denied\t203.0.113.0/24 at {lists}/blocked.txt:1\n"));

    // A sources file for another ruleset is refused, not believed; the answer stays.
    std::fs::write(&policy, source.replace("198.51.100.0/24", "198.51.100.0/25")).unwrap();
    let other = dir.path().join("other.mtac");
    build(&policy, &other);
    std::fs::copy(dir.path().join("other.mtac.sources"), &sources).unwrap();
    let out = mtac(&["lookup", r, "203.0.113.7"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).ends_with(&format!("\t(sources: {lists}/blocked.txt, inline)\n")),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains("describes ruleset"), "{}", text(&out.stderr));
    std::fs::remove_file(&sources).unwrap();
    let shown = explain(&[r], "203.0.113.7", "someone@example.com");
    assert!(shown.contains("(entries not named: ") && shown.contains("mx.mtac.sources not found"), "{shown}");
}
