//! What `mtac --version` says beyond the crate version: the commit, the build date and the
//! target. The date is the commit's (or `SOURCE_DATE_EPOCH`'s, as Nix and reproducible-build
//! tools set it), never the clock's, so two builds of one commit are the same bytes.
//! `MTAC_COMMIT` and `MTAC_BUILD_EPOCH` override the commit and the date where the source is not
//! a git checkout (a Nix store path, whose builder sets SOURCE_DATE_EPOCH to 1980).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `YYYY-MM-DD` of a Unix time (days to civil date, proleptic Gregorian).
fn date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn main() {
    println!("cargo:rerun-if-env-changed=MTAC_COMMIT");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=MTAC_BUILD_EPOCH");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{head}");
        }
    }
    let commit = std::env::var("MTAC_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let epoch = std::env::var("MTAC_BUILD_EPOCH")
        .or_else(|_| std::env::var("SOURCE_DATE_EPOCH"))
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%ct"]))
        .and_then(|s| s.trim().parse::<i64>().ok());
    let built = epoch.map_or_else(|| "unknown".to_owned(), date);
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=MTAC_COMMIT={commit}");
    println!("cargo:rustc-env=MTAC_BUILD_DATE={built}");
    println!("cargo:rustc-env=MTAC_TARGET={target}");
}
