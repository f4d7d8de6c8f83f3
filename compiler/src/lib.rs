//! # mtac-compiler: KDL policy → checked model → ruleset bytes
//!
//! The compiler is what makes a wrong policy impossible to ship. It runs four passes, each of which
//! reports every problem it finds (as [`Diag`]s with a stable code, a span and a help line) and
//! keeps going, so an operator sees all the errors of a policy in one run:
//!
//! 1. **parse** — kdl 2.0, spans kept ([`lower::Lowerer::lower_path`] reads includes and lists);
//! 2. **lower** — typed [`lower::Draft`], every node and property checked, "did you mean" on typos;
//! 3. **validate** — duplicates, contradictions, rules that never fire, safety errors;
//! 4. **emit** — the [`mtac_ruleset::model::Policy`] and its tables, serialised by
//!    [`mtac_ruleset::build`], then loaded back and *probed with the runtime's own evaluator*: an
//!    inbound farm that would relay a message for an unauthenticated stranger is refused with the
//!    concrete session (client, sender, recipient) that proves it.
//!
//! ```no_run
//! let compilation = mtac_compiler::compile_path(std::path::Path::new("policy.kdl"));
//! for diag in &compilation.diagnostics.list {
//!     eprintln!("{}", mtac_compiler::diag::render(diag, false));
//! }
//! if let Some(output) = compilation.output {
//!     mtac_ruleset::container::write_atomic(std::path::Path::new("ruleset.mtac"), &output.bytes)?;
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! **Invariant:** output is produced only when there is no error, and the same policy and files
//! always give byte-identical output.

#![forbid(unsafe_code)]

pub mod diag;
pub mod directory;
pub mod emit;
#[doc(hidden)]
pub mod fuzz;
pub mod lower;
pub mod policytest;
pub mod validate;

use diag::{Diag, Diagnostics, SourceFile};
use lower::{Lowerer, Origin, Pos};
use mtac_ruleset::eval::{self, Facts, NoDns};
use mtac_ruleset::model::{FarmKind, Stage};
use mtac_ruleset::Ruleset;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// A compiled ruleset, verified by loading it back.
pub struct Output {
    pub bytes: Vec<u8>,
    pub ruleset: Ruleset,
}

/// The result of one compilation: diagnostics always, output only without errors.
pub struct Compilation {
    pub diagnostics: Diagnostics,
    pub files: Vec<SourceFile>,
    pub output: Option<Output>,
}

pub fn compile_path(path: &Path) -> Compilation {
    compile_path_with(path, &Options::default())
}

/// What a compilation may do beyond reading the policy and its files.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Copy each farm's directory (LDAP) into its address table ([`directory::export`]).
    pub export_directory: bool,
}

pub fn compile_path_with(path: &Path, options: &Options) -> Compilation {
    compile(options, |lw| lw.lower_path(path))
}

/// Compile policy text; relative includes and lists are found in `dir`.
pub fn compile_text(name: &str, text: &str, dir: Option<PathBuf>) -> Compilation {
    compile(&Options::default(), |lw| lw.lower_text(name, text.to_owned(), dir))
}

fn compile(options: &Options, lower: impl FnOnce(&mut Lowerer<'_>) -> Option<lower::Draft>) -> Compilation {
    let mut diagnostics = Diagnostics::default();
    let mut lw = Lowerer::new(&mut diagnostics);
    let draft = lower(&mut lw);
    let mut output = None;
    if let Some(mut draft) = draft {
        if options.export_directory && !lw.diags.has_errors() {
            directory::export(&mut lw, &mut draft);
        }
        unexported_directories(&mut lw, &draft);
        validate::validate(&mut lw, &draft);
        if !lw.diags.has_errors() {
            output = emit_and_probe(&mut lw, &draft);
        }
    }
    let files = lw.files;
    if diagnostics.has_errors() {
        output = None;
    }
    Compilation { diagnostics, files, output }
}

fn emit_and_probe(lw: &mut Lowerer<'_>, draft: &lower::Draft) -> Option<Output> {
    let emitted = match emit::emit(draft) {
        Ok(e) => e,
        Err(errors) => {
            for e in errors {
                lw.diags.push(Diag::error("mtac::internal::table", e).help("this is a compiler bug: please report it"));
            }
            return None;
        }
    };
    let bytes = match mtac_ruleset::build(&emitted.policy, emitted.tables) {
        Ok(bytes) => bytes,
        Err(e) => {
            lw.diags.push(
                Diag::error("mtac::internal::build", e.to_string()).help("this is a compiler bug: please report it"),
            );
            return None;
        }
    };
    let ruleset = match Ruleset::from_vec(bytes.clone()) {
        Ok(r) => r,
        Err(e) => {
            lw.diags.push(
                Diag::error("mtac::internal::reload", format!("the ruleset does not load back: {e}"))
                    .help("this is a compiler bug: please report it"),
            );
            return None;
        }
    };
    probe_open_relay(lw, draft, &ruleset);
    Some(Output { bytes, ruleset })
}

/// A farm that trusts only the exported table (`lookups=#false`) but got no export accepts
/// every address of its local domains: say so, loudly.
fn unexported_directories(lw: &mut Lowerer<'_>, draft: &lower::Draft) {
    for farm in &draft.farms {
        if let Some((d, origin)) = &farm.directory {
            if !d.lookups && d.exported == 0 {
                lw.report(
                    Diag::warning(
                        "mtac::directory::not-exported",
                        format!(
                            "farm `{}` validates recipients only against the exported directory (`lookups=#false`), \
                             but this compilation did not export it",
                            farm.name
                        ),
                    )
                    .help("build with `mtac build --export-directory`; without it every address of the local domains is accepted"),
                    *origin,
                    "no export",
                );
            }
        }
    }
}

/// Ask the real evaluator whether a stranger could relay through an inbound farm.
fn probe_open_relay(lw: &mut Lowerer<'_>, draft: &lower::Draft, ruleset: &Ruleset) {
    let stranger: IpAddr = IpAddr::from([198, 51, 100, 77]);
    for (farm, draft_farm) in ruleset.policy().farms.iter().zip(&draft.farms) {
        if farm.kind != FarmKind::InboundMx {
            continue;
        }
        // One probe for any outside domain, plus one under each single-label wildcard (`com` with subdomains).
        let mut domains = vec!["relay-probe.example".to_owned()];
        for d in draft_farm.local_domains.iter().filter(|d| d.subdomains && !d.domain.contains('.')) {
            domains.push(format!("relay-probe-{}.{}", d.domain.len(), d.domain));
        }
        for domain in domains {
            let recipient = format!("someone@{domain}");
            let facts = Facts {
                client_ip: stranger,
                helo: Some("mail.example.org"),
                sender: Some("spammer@example.org"),
                recipient: Some(&recipient),
                authenticated: false,
                hostname: &ruleset.policy().hostname,
                dns: &NoDns,
            };
            let decision = eval::evaluate(ruleset, farm, Stage::Rcpt, &facts);
            if decision.reply.is_none() {
                let origin = draft_farm
                    .local_domains
                    .iter()
                    .find(|d| domain.ends_with(&d.domain))
                    .map_or(draft_farm.origin, |d| d.origin);
                lw.report(
                    Diag::error("mtac::open-relay", format!("inbound farm `{}` is an open relay", farm.name)).help(
                        format!(
                        "counter-example: client {stranger}, HELO mail.example.org, MAIL FROM:<spammer@example.org>, \
                         RCPT TO:<{recipient}> is accepted. List the exact domains you receive mail for"
                    ),
                    ),
                    origin,
                    "accepts mail for domains that are not ours",
                );
            }
        }
    }
}

/// Origin helper for diagnostics outside this crate (policy tests).
pub fn origin_in(file: usize, line: u32) -> Origin {
    Origin { file, pos: Pos::Line(line) }
}
