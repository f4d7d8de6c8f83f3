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
pub mod files;
#[doc(hidden)]
pub mod fuzz;
pub mod lower;
pub mod nodes;
pub mod policytest;
pub mod settings;
pub mod sources;
pub mod validate;

use diag::{Diag, Diagnostics, Reporter, SourceFile};
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
    /// Where each table entry was written ([`Options::entry_sources`]).
    pub sources: Option<sources::EntrySources>,
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
    /// Directories outside the policy's own from which includes and list files may be read
    /// (`--allow-dir`; [`files`] says why there is a boundary).
    pub allowed_dirs: Vec<PathBuf>,
    /// Name the source of every table entry in [`Output::sources`] (`mtac build` writes them to
    /// `RULESET.sources`; `explain --policy` shows them). A copy of every key: off for `check`.
    pub entry_sources: bool,
}

pub fn compile_path_with(path: &Path, options: &Options) -> Compilation {
    compile(options, |lw| lw.lower_path(path))
}

/// Compile policy text; relative includes and lists are found in `dir`.
pub fn compile_text(name: &str, text: &str, dir: Option<PathBuf>) -> Compilation {
    compile(&Options::default(), |lw| lw.lower_text(name, text.to_owned(), dir))
}

fn compile(options: &Options, lower: impl FnOnce(&mut Lowerer) -> Option<lower::Draft>) -> Compilation {
    let mut lw = Lowerer::new();
    for dir in &options.allowed_dirs {
        lw.allow_dir(dir);
    }
    let draft = lower(&mut lw);
    let mut reporter = lw.finish();
    let mut output = None;
    if let Some(mut draft) = draft {
        if options.export_directory && !reporter.has_errors() {
            directory::export(&mut reporter, &mut draft);
        }
        unexported_directories(&mut reporter, &draft);
        // Validation (the overlap analysis of a million networks takes
        // seconds) and the table build (as long) read the same draft and
        // nothing else: run them at once. The build is kept only if
        // validation finds no error.
        let draft = &draft;
        let built = std::thread::scope(|scope| {
            let builder = (!reporter.has_errors()).then(|| scope.spawn(|| build_ruleset(draft, options.entry_sources)));
            validate::validate(&mut reporter, draft);
            builder.map(|b| b.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        if let (false, Some(built)) = (reporter.has_errors(), built) {
            let built = built.map(|(mut output, origins)| {
                output.sources = origins.map(|origins| {
                    let names = output.ruleset.policy().tables.iter().map(|t| t.name.clone());
                    sources::EntrySources::new(output.ruleset.hash_hex(), names, origins, &reporter.files)
                });
                output
            });
            output = probe(&mut reporter, draft, built);
        }
    }
    if reporter.has_errors() {
        output = None;
    }
    Compilation { diagnostics: reporter.diagnostics, files: reporter.files, output }
}

/// Each table's entries and where they were written, in table order.
type TableOrigins = Vec<Vec<emit::EntryOrigin>>;

/// Emits the draft's tables and program, builds the ruleset and loads it
/// back as a node would; with `record_origins`, also where each entry was written. Errors
/// here are compiler bugs.
fn build_ruleset(draft: &lower::Draft, record_origins: bool) -> Result<(Output, Option<TableOrigins>), Vec<Diag>> {
    let bug = "this is a compiler bug: please report it";
    let emitted = emit::emit(draft, record_origins).map_err(|errors| {
        errors.into_iter().map(|e| Diag::error("mtac::internal::table", e).help(bug)).collect::<Vec<_>>()
    })?;
    let origins = emitted.origins;
    let bytes = mtac_ruleset::build(&emitted.policy, emitted.tables)
        .map_err(|e| vec![Diag::error("mtac::internal::build", e.to_string()).help(bug)])?;
    let ruleset = Ruleset::from_vec(bytes.clone()).map_err(|e| {
        vec![Diag::error("mtac::internal::reload", format!("the ruleset does not load back: {e}")).help(bug)]
    })?;
    Ok((Output { bytes, ruleset, sources: None }, origins))
}

/// Reports a failed build, or probes the built ruleset for an open relay.
fn probe(reporter: &mut Reporter, draft: &lower::Draft, built: Result<Output, Vec<Diag>>) -> Option<Output> {
    match built {
        Ok(output) => {
            probe_open_relay(reporter, draft, &output.ruleset);
            Some(output)
        }
        Err(diags) => {
            for diag in diags {
                reporter.push(diag);
            }
            None
        }
    }
}

/// A farm that trusts only the exported table (`lookups=#false`) but got no export accepts
/// every address of its local domains: say so, loudly.
fn unexported_directories(reporter: &mut Reporter, draft: &lower::Draft) {
    for farm in &draft.farms {
        if let Some((d, origin)) = &farm.directory {
            if !d.lookups && d.exported == 0 {
                reporter.report(
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
fn probe_open_relay(reporter: &mut Reporter, draft: &lower::Draft, ruleset: &Ruleset) {
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
                user: None,
                tls: false,
                hostname: &ruleset.policy().hostname,
                dns: &NoDns,
                greylist: None,
                directory: None,
                message: None,
            };
            let decision = eval::evaluate(ruleset, farm, Stage::Rcpt, &facts);
            if decision.reply.is_none() {
                let origin = draft_farm
                    .local_domains
                    .iter()
                    .find(|d| domain.ends_with(&d.domain))
                    .map_or(draft_farm.origin, |d| d.origin);
                reporter.report(
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
