//! Issue 14: the compiler treats a policy as untrusted input (CI checks merge requests), and the
//! binary survives a closed standard output. Each test runs the `mtac` binary as CI would.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// What a CI runner keeps in its environment; a policy must never get it printed.
const CANARY: &str = "ci-token-5f2c9e1b7d";

/// Runs `mtac ARGS` with `env` as its whole environment, killed after `limit` (a test that
/// would otherwise read /dev/zero or expand an include chain forever fails instead).
fn mtac_within(limit: Duration, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mtac runs");
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mtac {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

fn mtac(args: &[&str]) -> Output {
    mtac_within(Duration::from_secs(60), args, &[])
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn all_text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

const FARM: &str = r#"farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:2525"
    local-domains "example.com"
    deliver maildir="/tmp/m"
"#;

fn write_policy(dir: &Path, farm_lines: &str) -> String {
    let path = dir.join("policy.kdl");
    std::fs::write(&path, format!("hostname \"mx1.example.net\"\n{FARM}{farm_lines}}}\n")).unwrap();
    path.display().to_string()
}

#[test]
fn issue14_proc_self_environ_is_refused_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    // A link inside the tree leads there too: where it leads is what counts.
    std::os::unix::fs::symlink("/proc/self/environ", dir.path().join("env.txt")).unwrap();
    let cases = [
        ("    include \"/proc/self/environ\"\n", "mtac::include::outside-tree"),
        ("    local-addresses file=\"/proc/self/environ\"\n", "mtac::list::outside-tree"),
        ("    local-domains file=\"env.txt\"\n", "mtac::list::outside-tree"),
    ];
    for (lines, expected) in cases {
        let policy = write_policy(dir.path(), lines);
        for format in ["human", "json"] {
            let out =
                mtac_within(Duration::from_secs(30), &["check", "--format", format, &policy], &[("SECRET", CANARY)]);
            let shown = all_text(&out);
            assert_eq!(code(&out), 1, "{shown}");
            assert!(!shown.contains(CANARY), "the environment was printed ({format}):\n{shown}");
            assert!(shown.contains(expected), "{lines}: {shown}");
            if format == "json" {
                let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
                assert!(diags.as_array().is_some_and(|d| d.iter().any(|d| d["code"] == expected)), "{diags:#}");
            }
        }
    }
}

#[test]
fn issue14_dev_zero_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "    include \"/dev/zero\"\n    local-domains file=\"/dev/zero\"\n");
    let started = Instant::now();
    let out = mtac_within(Duration::from_secs(20), &["check", &policy], &[]);
    assert_eq!(code(&out), 1, "{}", all_text(&out));
    assert!(all_text(&out).contains("mtac::include::outside-tree"), "{}", all_text(&out));
    // Even where the operator allows /dev, a device is never opened.
    let out = mtac_within(Duration::from_secs(20), &["check", "--allow-dir", "/dev", &policy], &[]);
    let shown = all_text(&out);
    assert_eq!(code(&out), 1, "{shown}");
    assert!(shown.contains("mtac::include::not-regular"), "{shown}");
    assert!(shown.contains("mtac::list::not-regular"), "{shown}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

#[test]
fn issue14_a_device_as_certificate_is_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write_policy(dir.path(), "    tls certificate=\"/dev/zero\" key=\"/dev/zero\"\n");
    let out = mtac_within(Duration::from_secs(20), &["check", "--format", "json", &policy], &[]);
    assert_eq!(code(&out), 1, "{}", all_text(&out));
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert!(diags.as_array().unwrap().iter().any(|d| d["code"] == "mtac::tls::certificate"), "{diags:#}");
}

#[test]
fn issue14_an_include_chain_that_doubles_stops_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    // f0 includes f1 twice, f1 includes f2 twice…: 2^40 includes without a cap.
    for i in 0..40 {
        let next = format!("include \"f{}.kdl\"\n", i + 1);
        std::fs::write(dir.path().join(format!("f{i}.kdl")), next.repeat(2)).unwrap();
    }
    std::fs::write(dir.path().join("f40.kdl"), "// the end\n").unwrap();
    let policy = write_policy(dir.path(), "    include \"f0.kdl\"\n");
    let started = Instant::now();
    let out = mtac_within(Duration::from_secs(30), &["check", "--format", "json", &policy], &[]);
    assert_eq!(code(&out), 1, "{}", all_text(&out));
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let too_many: Vec<_> =
        diags.as_array().unwrap().iter().filter(|d| d["code"] == "mtac::include::too-many").collect();
    assert_eq!(too_many.len(), 1, "said once: {diags:#}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn issue14_a_file_outside_the_tree_is_read_only_where_allowed() {
    let root = tempfile::tempdir().unwrap();
    let (policy_dir, shared) = (root.path().join("policy"), root.path().join("shared"));
    std::fs::create_dir_all(&policy_dir).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("domains.txt"), "example.org\n").unwrap();
    std::fs::write(shared.join("rules.kdl"), "local-domains file=\"domains.txt\"\n").unwrap();
    let policy = write_policy(&policy_dir, "    include \"../shared/rules.kdl\"\n");
    let shared_arg = shared.display().to_string();

    let out = mtac(&["check", &policy]);
    assert_eq!(code(&out), 1, "{}", all_text(&out));
    assert!(all_text(&out).contains("mtac::include::outside-tree"), "{}", all_text(&out));

    let out = mtac(&["check", "--allow-dir", &shared_arg, "--deny-warnings", &policy]);
    assert_eq!(code(&out), 0, "{}", all_text(&out));
    // The allowance reaches every command that compiles a policy.
    let out = mtac(&["explain", "--allow-dir", &shared_arg, "--policy", &policy, "--client-ip", "192.0.2.1"]);
    assert_eq!(code(&out), 0, "{}", all_text(&out));
    let ruleset = root.path().join("ruleset.mtac").display().to_string();
    let out = mtac(&["build", "--allow-dir", &shared_arg, &policy, "-o", &ruleset]);
    assert_eq!(code(&out), 0, "{}", all_text(&out));
    // An allowed directory that does not exist is a usage error, not a silent no-op.
    let out = mtac(&["check", "--allow-dir", "/no/such/dir", &policy]);
    assert_eq!(code(&out), 2, "{}", all_text(&out));
}

/// Runs `mtac ARGS` with standard output already closed by its reader (`| head -c 0`).
fn with_stdout_closed(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .expect("mtac runs");
    child.wait_with_output().unwrap()
}

#[test]
fn issue14_a_closed_stdout_is_a_quiet_exit() {
    let cases: [(&[&str], i32); 4] = [
        (&["completions", "zsh"], 0),
        (&["check", "--format", "json", "examples/quickstart/policy.kdl"], 0),
        (&["check", "--format", "json", "tests/policies/err/open-relay.kdl"], 1),
        (&["test", "examples/quickstart"], 0),
    ];
    for (args, expected) in cases {
        let out = with_stdout_closed(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code(&out), expected, "mtac {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "mtac {args:?}: {stderr}");
    }
}
