//! The model fingerprint: a hash of the code that fixes what a ruleset's bytes mean — the policy
//! model that postcard encodes (`src/model.rs`; postcard is not self-describing, so another
//! model can decode the same bytes into other settings without an error) and the tables' layout
//! (`src/tables.rs`). `mtac build` writes it into every ruleset and a node refuses a ruleset
//! whose fingerprint differs from its own, rather than serve a misread policy. Comment lines and
//! indentation do not count, so a documentation change keeps rulesets loadable.

fn main() {
    // FNV-1a, 64 bits: no dependency, and stable across Rust versions.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in ["src/model.rs", "src/tables.rs"] {
        println!("cargo:rerun-if-changed={file}");
        let Ok(text) = std::fs::read_to_string(file) else {
            println!("cargo::error=cannot read {file} for the model fingerprint");
            return;
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")) {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    println!("cargo:rustc-env=MTAC_MODEL_FINGERPRINT={hash:016x}");
}
