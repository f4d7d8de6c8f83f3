//! The `mtac` binary as CI and operators use it: exit codes, JSON diagnostics, atomic builds,
//! inspect, explain and policy tests.

use std::path::Path;
use std::process::{Command, Output};

fn mtac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtac")).args(args).output().expect("mtac runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_exit_codes_are_0_1_2() {
    assert_eq!(code(&mtac(&["check", "examples/quickstart/policy.kdl"])), 0);
    assert_eq!(code(&mtac(&["check", "tests/policies/err/open-relay.kdl"])), 1);
    assert_eq!(code(&mtac(&["check", "no/such/policy.kdl"])), 2);
    assert_eq!(code(&mtac(&["check"])), 2, "usage error");
    assert_eq!(code(&mtac(&["check", "--deny-warnings", "tests/policies/err/contradiction.kdl"])), 1);
}

#[test]
fn json_diagnostics_carry_code_file_and_line() {
    let out = mtac(&["check", "--format", "json", "tests/policies/err/typo-node.kdl"]);
    assert_eq!(code(&out), 1);
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let first = &diags[0];
    assert_eq!(first["code"], "mtac::unknown-node");
    assert_eq!(first["severity"], "error");
    assert_eq!(first["line"], 4);
    assert_eq!(first["help"], "did you mean `local-domains`?");
    assert!(first["file"].as_str().unwrap().ends_with("typo-node.kdl"));
}

#[test]
fn a_failed_build_writes_nothing_and_a_good_one_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("ruleset.mtac");
    let out = out_path.to_str().unwrap();
    let failed = mtac(&["build", "tests/policies/err/no-backend.kdl", "-o", out]);
    assert_eq!(code(&failed), 1);
    assert!(!out_path.exists(), "a failed build left a file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "a failed build left a temporary file");

    assert_eq!(code(&mtac(&["build", "examples/company/policy.kdl", "-o", out])), 0);
    let first = std::fs::read(&out_path).unwrap();
    assert_eq!(code(&mtac(&["build", "examples/company/policy.kdl", "-o", out])), 0);
    assert_eq!(first, std::fs::read(&out_path).unwrap(), "two builds differ");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary files left behind");
}

#[test]
fn inspect_lists_farms_tables_and_sources() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("r.mtac");
    assert_eq!(code(&mtac(&["build", "examples/company/policy.kdl", "-o", out_path.to_str().unwrap()])), 0);
    let out = mtac(&["inspect", out_path.to_str().unwrap()]);
    assert_eq!(code(&out), 0);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("farm mx (inbound-mx)"), "{stdout}");
    assert!(stdout.contains("farm users (submission)"), "{stdout}");
    let accounts = stdout.lines().find(|l| l.starts_with("mx.local-addresses")).expect("address table listed");
    assert!(accounts.contains("3000"), "{accounts}");
    assert!(accounts.contains("accounts.txt"), "{accounts}");
}

#[test]
fn inspect_refuses_a_corrupt_ruleset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.mtac");
    assert_eq!(code(&mtac(&["build", "examples/quickstart/policy.kdl", "-o", path.to_str().unwrap()])), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = mtac(&["inspect", path.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    assert!(text(&out.stderr).contains("hash"), "{}", text(&out.stderr));
}

#[test]
fn explain_shows_each_rule_and_the_reply() {
    let out = mtac(&[
        "explain",
        "--policy",
        "examples/company/policy.kdl",
        "--farm",
        "mx",
        "--client-ip",
        "192.0.2.66",
        "--helo",
        "mail.spam.example",
        "--from",
        "x@spam.example",
        "--rcpt",
        "ana.garcia57@acme-foods.example",
        "--dnsbl",
        "zen.spamhaus.org=127.0.0.2",
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("relay"), "{stdout}");
    assert!(stdout.contains("zen.spamhaus.org 127.0.0.2 +3") || stdout.contains("REFUSE"), "{stdout}");
    assert!(stdout.trim_end().ends_with("at rcpt (rule dnsbl)"), "{stdout}");
}

#[test]
fn policy_tests_pass_on_the_shipped_policies_and_fail_loudly_on_a_wrong_expectation() {
    let out = mtac(&["test", "examples", "policies"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stdout));
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::canonicalize("examples/quickstart/policy.kdl").unwrap();
    let test = dir.path().join("wrong.test.kdl");
    std::fs::write(
        &test,
        format!(
            "policy {:?}\ntest \"wrong\" {{\n client \"127.0.0.1\"\n helo \"a.example.org\"\n from \"a@example.org\"\n rcpt \"x@elsewhere.example\"\n expect \"accept\"\n}}\n",
            policy.display().to_string()
        ),
    )
    .unwrap();
    let out = mtac(&["test", test.to_str().unwrap()]);
    assert_eq!(code(&out), 1);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("- expected: accept"), "{stdout}");
    assert!(stdout.contains("+ got:      554 5.7.1 Relay access denied at rcpt (rule relay)"), "{stdout}");
}

#[test]
fn completions_are_generated() {
    let out = mtac(&["completions", "bash"]);
    assert_eq!(code(&out), 0);
    assert!(text(&out.stdout).contains("mtac"));
    assert!(Path::new(env!("CARGO_BIN_EXE_mtac")).exists());
}
