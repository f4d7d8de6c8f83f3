//! Golden tests of the policy compiler.
//!
//! Each `tests/policies/err/NAME.kdl` must fail `check` with exactly the diagnostics rendered in
//! `NAME.expected` beside it; each `tests/policies/ok/NAME.kdl` must compile without errors. On a
//! mismatch the actual rendering is written to `NAME.actual`; run with `MTAC_BLESS=1` to accept
//! new renderings. The corpus must not be empty.

use std::path::{Path, PathBuf};

fn kdl_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kdl"))
        .collect();
    files.sort();
    files
}

fn render(path: &Path) -> (String, bool) {
    let compilation = mtac_compiler::compile_path(path);
    let mut out = String::new();
    for d in &compilation.diagnostics.list {
        out.push_str(&mtac_compiler::diag::render(d, false));
    }
    (out, compilation.output.is_some())
}

#[test]
fn error_policies_render_their_expected_diagnostics() {
    let files = kdl_files("tests/policies/err");
    assert!(files.len() >= 10, "the error corpus is missing");
    let bless = std::env::var_os("MTAC_BLESS").is_some();
    let mut failures = Vec::new();
    for file in files {
        let (actual, produced) = render(&file);
        assert!(!produced, "{} compiled, but it is in err/", file.display());
        assert!(actual.contains('×'), "{} produced no error", file.display());
        let expected_path = file.with_extension("expected");
        let actual_path = file.with_extension("actual");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            std::fs::write(&actual_path, &actual).unwrap();
            failures.push(file.display().to_string());
        } else {
            let _ = std::fs::remove_file(&actual_path);
        }
    }
    assert!(failures.is_empty(), "diagnostics changed (see the .actual files): {failures:?}");
}

#[test]
fn ok_policies_compile() {
    let mut files = kdl_files("tests/policies/ok");
    files.extend(
        [
            "examples/quickstart/policy.kdl",
            "examples/company/policy.kdl",
            "examples/isp/policy.kdl",
            "examples/sender-auth/policy.kdl",
        ]
        .map(PathBuf::from),
    );
    for file in files {
        let (diags, produced) = render(&file);
        assert!(produced, "{} does not compile:\n{diags}", file.display());
    }
}

#[test]
fn same_policy_gives_identical_ruleset_bytes() {
    let a = mtac_compiler::compile_path(Path::new("examples/quickstart/policy.kdl")).output.unwrap();
    let b = mtac_compiler::compile_path(Path::new("examples/quickstart/policy.kdl")).output.unwrap();
    assert_eq!(a.bytes, b.bytes);
}

#[test]
fn every_error_of_a_policy_is_reported_in_one_run() {
    let compilation = mtac_compiler::compile_path(Path::new("tests/policies/err/bad-values.kdl"));
    let codes: Vec<&str> = compilation.diagnostics.list.iter().map(|d| d.code).collect();
    for code in ["mtac::listen::address", "mtac::domain", "mtac::address", "mtac::cidr", "mtac::reply::class"] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
}
