//! The `mtac` binary as CI and operators use it: exit codes, JSON diagnostics, atomic builds,
//! inspect, explain and policy tests.

use std::path::Path;
use std::process::{Command, Output};

pub(crate) fn mtac(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtac")).args(args).output().expect("mtac runs")
}

pub(crate) fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes a `mtac test` file for `policy` (its first line names it) and runs it.
fn run_policy_test(dir: &Path, name: &str, policy: &Path, tests: &str) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, format!("policy {:?}\n{tests}", policy.display().to_string())).unwrap();
    mtac(&["test", file.to_str().unwrap()])
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
    let sources_path = dir.path().join("ruleset.mtac.sources");
    let first = (std::fs::read(&out_path).unwrap(), std::fs::read(&sources_path).unwrap());
    assert_eq!(code(&mtac(&["build", "examples/company/policy.kdl", "-o", out])), 0);
    let second = (std::fs::read(&out_path).unwrap(), std::fs::read(&sources_path).unwrap());
    assert!(first == second, "two builds differ");
    // The ruleset and the file naming its entries' sources, nothing else.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "temporary files left behind");
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

/// A ruleset whose bytes another policy model wrote (an older or newer mtac) is refused with
/// what to do, never decoded: postcard would read them as some other policy without an error.
#[test]
fn a_ruleset_of_another_policy_model_is_refused() {
    use mtac_ruleset::container::{Container, ContainerWriter, SectionKind};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.mtac");
    assert_eq!(code(&mtac(&["build", "examples/quickstart/policy.kdl", "-o", path.to_str().unwrap()])), 0);
    assert_eq!(code(&mtac(&["inspect", path.to_str().unwrap()])), 0);
    let built = Container::open(&path).unwrap();
    for model in [None, Some(&b"0123456789abcdef"[..])] {
        // The same sections, with no model fingerprint or another one: a valid container.
        let mut writer = ContainerWriter::new();
        for section in built.sections().filter(|s| s.kind != SectionKind::Model) {
            let bytes = built.section(section.kind, section.id).unwrap();
            writer.add_section(section.kind, section.id, bytes.as_slice().to_vec()).unwrap();
        }
        if let Some(model) = model {
            writer.add_section(SectionKind::Model, 0, model.to_vec()).unwrap();
        }
        let other = dir.path().join("other.mtac");
        std::fs::write(&other, writer.to_bytes(built.compiler_version())).unwrap();
        let out = mtac(&["inspect", other.to_str().unwrap()]);
        assert_eq!(code(&out), 2, "{model:?}");
        let said = text(&out.stderr);
        assert!(said.contains("policy model differs") && said.contains("rebuild it with this node's mtac"), "{said}");
        assert!(said.contains(model.map_or("from an older mtac", |_| "model 0123456789abcdef")), "{said}");
    }
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

/// Issue 15: `explain` can say who logged in, and then refuses a sender the user does not own
/// with the node's 553; without the user it says that the node would check, and a policy test
/// that leaves the user out fails instead of passing for a session the node would refuse.
#[test]
fn issue15_explain_and_tests_know_the_authenticated_user() {
    let session = [
        "explain",
        "--policy",
        "examples/company/policy.kdl",
        "--farm",
        "users",
        "--client-ip",
        "203.0.113.9",
        "--helo",
        "laptop.acme.example",
        "--from",
        "bruno.lopez3@acme.example",
        "--rcpt",
        "customer@elsewhere.example",
    ];
    let out = mtac(&[&session[..], &["--user", "ana.garcia57"]].concat());
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.trim_end().ends_with(
            "=> 553 5.7.1 Sender address rejected: not owned by the authenticated user at mail (rule auth.sender)"
        ),
        "{stdout}"
    );
    let out = mtac(&[&session[..], &["--user", "bruno.lopez3"]].concat());
    assert!(text(&out.stdout).contains("=> accepted"), "{}", text(&out.stdout));
    let out = mtac(&[&session[..], &["--authenticated"]].concat());
    assert!(text(&out.stdout).contains("auth.sender              pending"), "{}", text(&out.stdout));
    let out = mtac(&[&session[..], &["--user", "bruno.lopez3", "--no-tls"]].concat());
    assert!(
        text(&out.stdout).contains("=> 530 5.7.0 Must issue a STARTTLS command first at mail"),
        "{}",
        text(&out.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let company = std::fs::canonicalize("examples/company/policy.kdl").unwrap();
    let out = run_policy_test(
        dir.path(),
        "unnamed.test.kdl",
        &company,
        r#"test "someone" {
 farm "users"
 helo "laptop.acme.example"
 from "bruno.lopez3@acme.example"
 rcpt "customer@elsewhere.example"
 authenticated
 expect "accept"
}
"#,
    );
    assert_eq!(code(&out), 1, "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("give user"), "{}", text(&out.stdout));
}

#[test]
fn policy_tests_pass_on_the_shipped_policies_and_fail_loudly_on_a_wrong_expectation() {
    let out = mtac(&["test", "examples", "policies"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stdout));
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::canonicalize("examples/quickstart/policy.kdl").unwrap();
    let out = run_policy_test(
        dir.path(),
        "wrong.test.kdl",
        &policy,
        r#"test "wrong" {
 client "127.0.0.1"
 helo "a.example.org"
 from "a@example.org"
 rcpt "x@elsewhere.example"
 expect "accept"
}
"#,
    );
    assert_eq!(code(&out), 1);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.contains("- expected: accept"), "{stdout}");
    assert!(stdout.contains("+ got:      554 5.7.1 Relay access denied at rcpt (rule relay)"), "{stdout}");

    // "accept" that hangs on a fact the node would still look up is not a passing test.
    let company = std::fs::canonicalize("examples/company/policy.kdl").unwrap();
    let out = run_policy_test(
        dir.path(),
        "undecided.test.kdl",
        &company,
        r#"test "new hire" {
 farm "mx"
 client "192.0.2.10"
 helo "mail.partner.example"
 from "a@partner.example"
 rcpt "new.hire@acme.example"
 expect "accept"
}
"#,
    );
    assert_eq!(code(&out), 1, "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("give directory"), "{}", text(&out.stdout));
}

/// Issue 15: a misspelt `rule=` made the test fail against a policy that did what was meant
/// ("expected … (rule recipient.unknwon)"), which reads as a policy bug. It is a broken file.
#[test]
fn issue_15_mtac_test_refuses_an_unknown_rule_name_and_suggests_the_right_one() {
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::canonicalize("examples/quickstart/policy.kdl").unwrap();
    let out = run_policy_test(
        dir.path(),
        "typo.test.kdl",
        &policy,
        r#"test "relay" {
 client "127.0.0.1"
 helo "a.example.org"
 from "a@example.org"
 rcpt "x@elsewhere.example"
 expect "554" rule="rely"
}
"#,
    );
    assert_eq!(code(&out), 1, "{}", text(&out.stdout));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("mtac::test::unknown-rule"), "{all}");
    assert!(all.contains("did you mean `relay`?"), "{all}");
    assert!(all.contains("1 file(s) broken"), "{all}");
}

#[test]
fn completions_are_generated() {
    let out = mtac(&["completions", "bash"]);
    assert_eq!(code(&out), 0);
    assert!(text(&out.stdout).contains("mtac"));
    assert!(Path::new(env!("CARGO_BIN_EXE_mtac")).exists());
}

/// A self-signed certificate for `name`, valid for `days` (0: it expires within the second).
fn self_signed(dir: &Path, stem: &str, name: &str, days: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", days])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command");
    assert!(out.status.success(), "{}", text(&out.stderr));
    (cert.display().to_string(), key.display().to_string())
}

/// A self-signed certificate for `name` that expired in 2020 (`openssl ca` can set the dates).
fn expired_certificate(dir: &Path, name: &str) -> (String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out.stderr));
    };
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    std::fs::write(
        dir.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\ndefault_md = sha256\n\
             policy = p\n[p]\ncommonName = supplied\n[ext]\nsubjectAltName = DNS:{name}\n"
        ),
    )
    .unwrap();
    run(&["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        .into_iter()
        .chain(["-keyout", "expired.key", "-out", "expired.csr", "-subj"])
        .chain([format!("/CN={name}").as_str()])
        .collect::<Vec<_>>());
    run(&[
        "ca",
        "-batch",
        "-selfsign",
        "-notext",
        "-config",
        "ca.cnf",
        "-extensions",
        "ext",
        "-keyfile",
        "expired.key",
    ]
    .into_iter()
    .chain(["-in", "expired.csr", "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate"])
    .chain(["20200201000000Z"])
    .collect::<Vec<_>>());
    (dir.join("expired.pem").display().to_string(), dir.join("expired.key").display().to_string())
}

/// A submission farm for smtp.example.test with this certificate and one user, `alice`, whose
/// password has this hash; written to `dir/policy.kdl`.
fn submission_policy(dir: &Path, cert: &str, key: &str, hash: &str) -> std::path::PathBuf {
    let path = dir.join("policy.kdl");
    let text = format!(
        r#"hostname "smtp.example.test"
farm "users" kind="submission" {{
    listen "127.0.0.1:587"
    local-domains "example.test"
    tls certificate="{cert}" key="{key}"
    auth {{ user "alice" hash="{hash}" }}
    relay {{ backend "smtp://127.0.0.1:2600" }}
}}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_reports_expired_expiring_and_misnamed_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let policy = |cert: &str, key: &str| {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$bXRhYy1leGFtcGxl$NjI0MzZlYzM5NzM2ZmE0ZDc1ZmQ3NzA1";
        let path = submission_policy(dir.path(), cert, key, hash);
        mtac(&["check", path.to_str().unwrap()])
    };
    let (good, good_key) = self_signed(dir.path(), "good", "smtp.example.test", "90");
    let out = policy(&good, &good_key);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));

    let (soon, soon_key) = self_signed(dir.path(), "soon", "smtp.example.test", "3");
    let out = policy(&soon, &soon_key);
    assert_eq!(code(&out), 0, "a warning only");
    assert!(text(&out.stderr).contains("mtac::tls::expiring"), "{}", text(&out.stderr));

    let (other, other_key) = self_signed(dir.path(), "other", "mail.elsewhere.example", "90");
    let out = policy(&other, &other_key);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("does not name smtp.example.test"), "{}", text(&out.stderr));

    let (expired, expired_key) = expired_certificate(dir.path(), "smtp.example.test");
    let out = policy(&expired, &expired_key);
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("expired on"), "{}", text(&out.stderr));
}

/// A PHC string for `password` with the given variant and costs (m in KiB).
fn argon2_phc(algorithm: argon2::Algorithm, m: u32, t: u32) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(m, t, 1, None).unwrap();
    let salt = SaltString::encode_b64(b"mtac-test-salt").unwrap();
    argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string()
}

#[test]
fn issue14_weak_argon2_hashes_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "good", "smtp.example.test", "90");
    let check = |hash: &str| {
        let path = submission_policy(dir.path(), &cert, &key, hash);
        mtac(&["check", "--deny-warnings", "--format", "json", path.to_str().unwrap()])
    };
    let messages = |out: &Output, code: &str| -> Vec<String> {
        let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        diags.as_array().unwrap().iter().filter(|d| d["code"] == code).map(|d| d["message"].to_string()).collect()
    };
    use argon2::Algorithm::{Argon2d, Argon2i, Argon2id};
    for (algorithm, m, t, says) in [
        (Argon2d, 8, 1, "argon2d instead of argon2id, m=8 KiB (below 19456), t=1 (below 2)"),
        (Argon2i, 19_456, 2, "argon2i instead of argon2id"),
        (Argon2id, 4_096, 3, "m=4096 KiB (below 19456)"),
    ] {
        let out = check(&argon2_phc(algorithm, m, t));
        assert_eq!(code(&out), 1, "{}", text(&out.stdout));
        let weak = messages(&out, "mtac::auth::weak-hash");
        assert!(weak.len() == 1 && weak.iter().all(|m| m.contains(says)), "{weak:?}");
    }
    let out = check(&argon2_phc(Argon2id, 19_456, 2));
    assert_eq!(code(&out), 0, "the recommended minimum passes: {}", text(&out.stdout));
    let out = check("$argon2id$v=19$m=19456,t=2,p=1$not base64!$x");
    assert_eq!(code(&out), 1);
    let bad = messages(&out, "mtac::auth::hash");
    assert!(bad.iter().any(|m| m.contains("not a valid Argon2 PHC string")), "{}", text(&out.stdout));
}
