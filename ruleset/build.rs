//! Two fingerprints of the code that fixes what bytes mean. postcard is not self-describing, so
//! bytes written under another layout can decode into other values without an error; each file
//! format carries the fingerprint of its layout and a reader refuses another one.
//!
//! - The model fingerprint: a hash of the policy model that postcard encodes (`src/model.rs`) and
//!   the tables' layout (`src/tables.rs`). `mtac build` writes it into every ruleset and a node
//!   refuses a ruleset whose fingerprint differs from its own, rather than serve a misread policy.
//! - The journal fingerprint: a hash of the definitions of the types a decision journal's records
//!   hold (every `Serialize` type of the evaluator's facts, of the journal module, and the
//!   model's `Reply` and `Stage`), and only those, so a change elsewhere in the evaluator keeps
//!   old journals replayable.
//!
//! Comment lines and indentation do not count, so a documentation change keeps files loadable.

/// FNV-1a, 64 bits: no dependency, and stable across Rust versions.
struct Fnv(u64);

impl Fnv {
    fn lines<'a>(&mut self, lines: impl Iterator<Item = &'a str>) {
        for line in lines.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")) {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                self.0 ^= u64::from(byte);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
}

fn read(file: &str) -> Option<String> {
    println!("cargo:rerun-if-changed={file}");
    let text = std::fs::read_to_string(file).ok();
    if text.is_none() {
        println!("cargo::error=cannot read {file} for the fingerprints");
    }
    text
}

/// The items of `text` derived with `Serialize` (from the derive line to the item's closing
/// brace at column 0), those whose head names one of `only` if given.
fn serialized_items<'a>(text: &'a str, only: Option<&[&str]>) -> Vec<Vec<&'a str>> {
    let mut items = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        if let Some(item) = current.as_mut() {
            item.push(line);
            if line == "}" || (line.starts_with("pub ") && line.ends_with(';')) {
                items.extend(current.take());
            }
        } else if line.starts_with("#[derive(") && line.contains("Serialize") {
            current = Some(vec![line]);
        }
    }
    items.retain(|item| {
        only.is_none_or(|names| {
            item.iter().any(|l| {
                names.iter().any(|n| l.contains(&format!("pub struct {n} ")) || l.contains(&format!("pub enum {n} ")))
            })
        })
    });
    items
}

fn main() {
    let mut model = Fnv(0xcbf2_9ce4_8422_2325);
    for file in ["src/model.rs", "src/tables.rs"] {
        let Some(text) = read(file) else { return };
        model.lines(text.lines());
    }
    println!("cargo:rustc-env=MTAC_MODEL_FINGERPRINT={:016x}", model.0);

    let mut journal = Fnv(0xcbf2_9ce4_8422_2325);
    let sources: [(&str, Option<&[&str]>); 6] = [
        ("src/eval.rs", None),
        ("src/sender_auth.rs", None),
        ("src/filters.rs", None),
        ("src/replay.rs", None),
        ("src/journal/mod.rs", None),
        ("src/model.rs", Some(&["Reply", "Stage"])),
    ];
    for (file, only) in sources {
        let Some(text) = read(file) else { return };
        for item in serialized_items(&text, only) {
            journal.lines(item.into_iter());
        }
    }
    println!("cargo:rustc-env=MTAC_JOURNAL_FINGERPRINT={:016x}", journal.0);
}
