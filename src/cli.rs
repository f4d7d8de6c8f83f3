//! Command-line interface: clap definitions and one function per sub-command.
//!
//! Exit codes, for CI: 0 clean, 1 the policy (or a policy test) is wrong, 2 usage or I/O error.
//! `println!` and `eprintln!` here are main.rs's, which survive a closed pipe (see `output`).

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use mtac_compiler::diag::{self, Diag};
use mtac_compiler::policytest::{self, Session};
use mtac_compiler::sources::{EntrySources, Recorder};
use mtac_compiler::Compilation;
use mtac_ruleset::eval::StepOutcome;
use mtac_ruleset::model::{Relay, TableKind};
use mtac_ruleset::{Ruleset, Table};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const ABOUT: &str = "A queueless anti-spam SMTP perimeter for mail farms, driven by declarative KDL policy.";

const LONG_ABOUT: &str = "\
A queueless anti-spam SMTP perimeter for mail farms, driven by declarative KDL policy.

The workflow: keep the policy in git; CI runs `mtac check` and `mtac test` on every change and
`mtac build` writes one ruleset file; push that file to every node; each node's `mtac run`
reloads it by itself.

Exit codes: 0 clean, 1 policy errors, failed policy tests or (`diff`) more newly refused decisions than
--fail-if-refused allows, 2 usage or I/O errors.";

/// `mtac --version`: the crate version, and the commit, build date and target build.rs found.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MTAC_COMMIT"),
    ", built ",
    env!("MTAC_BUILD_DATE"),
    ", ",
    env!("MTAC_TARGET"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "mtac", version = VERSION, about = ABOUT, long_about = LONG_ABOUT, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a policy and report every problem in it
    Check {
        /// The policy file (.kdl)
        policy: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
        #[command(flatten)]
        files: FileArgs,
    },
    /// Compile a policy into a ruleset file (written atomically; nothing is written on error)
    Build {
        /// The policy file (.kdl)
        policy: PathBuf,
        /// Where to write the ruleset
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Copy every address of each farm's `directory` (LDAP) into the ruleset, so nodes
        /// validate those recipients with no LDAP round trip
        #[arg(long)]
        export_directory: bool,
        #[command(flatten)]
        format: OutputArgs,
        #[command(flatten)]
        files: FileArgs,
    },
    /// Show what a ruleset file holds: version, hash, farms, tables and their sources
    Inspect {
        /// The ruleset file
        ruleset: PathBuf,
        /// Print every effective setting instead, in the policy's own KDL (a policy that
        /// `mtac check` accepts), values equal to the farm kind's defaults marked `// default`;
        /// lists are named with their entry count and sources, not printed
        #[arg(long)]
        settings: bool,
        /// With --settings: only this farm (and the top-level settings)
        #[arg(long, requires = "settings")]
        farm: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Look a key up in a ruleset's tables, like postmap -q: an IP address, an address or a
    /// domain; exit 0 when a table matched, 1 when none did
    Lookup(crate::lookup::LookupArgs),
    /// Evaluate one session against a ruleset and show each rule consulted and the reply
    Explain(Box<ExplainArgs>),
    /// What a policy change would change: replay decision journals through OLD and NEW and
    /// count the decisions that change (exit 1 over --fail-if-refused), or without journals
    /// compare the rulesets' steps, replies, table entries and settings
    Diff(Box<crate::diff::DiffArgs>),
    /// Run declarative policy tests (files, or directories searched for *.test.kdl)
    Test {
        /// Test files or directories
        #[arg(required = true)]
        tests: Vec<PathBuf>,
        #[command(flatten)]
        files: FileArgs,
    },
    /// Serve SMTP from a ruleset (hot-reloaded when the file changes or on SIGHUP)
    Run(RunArgs),
    /// Ask nodes' admin listeners for their state and say whether the farm runs one ruleset
    Status(crate::status::StatusArgs),
    /// Show a node's greylist and ban state (counts, bans with their expiry, one client or triplet), or lift a ban, on its admin socket
    State(crate::status::StateArgs),
    /// Show or change a running node's log filter (RUST_LOG's syntax), on its admin socket
    LogLevel(crate::status::LogLevelArgs),
    /// Follow a running node's decision lines for some clients (or a farm), on its admin socket
    Trace(crate::status::TraceArgs),
    /// Print the DNS TXT record that publishes a DKIM key (`dkim-sign`)
    DkimRecord(crate::dkim_record::DkimRecordArgs),
    /// Make an Argon2id password hash for a submission farm's `user` entries (the password from
    /// the terminal without echo, or one line of stdin)
    HashPassword(crate::tools::HashPasswordArgs),
    /// Write man pages (mtac.1 and one per command) into a directory
    ManPages(crate::tools::ManPagesArgs),
    /// Print shell completions
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// Output format for diagnostics
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Treat warnings as errors (exit 1)
    #[arg(long)]
    deny_warnings: bool,
}

/// Where a policy's includes and list files may come from.
#[derive(Args, Debug, Clone, Default)]
pub struct FileArgs {
    /// Also read includes and list files under DIR (repeatable). By default only files under
    /// the policy's own directory are read, so a policy cannot make the compiler read (and
    /// print) files such as /proc/self/environ
    #[arg(long = "allow-dir", value_name = "DIR")]
    allow_dirs: Vec<PathBuf>,
}

impl FileArgs {
    /// The compiler's options; a directory that does not exist is a usage error.
    fn options(&self) -> Result<mtac_compiler::Options, String> {
        if let Some(dir) = self.allow_dirs.iter().find(|d| !d.is_dir()) {
            return Err(format!("--allow-dir {}: not a directory", dir.display()));
        }
        Ok(mtac_compiler::Options { allowed_dirs: self.allow_dirs.clone(), ..Default::default() })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The ruleset file (or use --policy)
    #[arg(required_unless_present = "policy", conflicts_with = "policy")]
    ruleset: Option<PathBuf>,
    /// Compile this policy in memory instead of reading a ruleset
    #[arg(long, value_name = "POLICY")]
    policy: Option<PathBuf>,
    /// The farm to evaluate (default: the first)
    #[arg(long)]
    farm: Option<String>,
    /// The client's IP address
    #[arg(long, value_name = "IP")]
    client_ip: IpAddr,
    /// The HELO/EHLO name
    #[arg(long)]
    helo: Option<String>,
    /// The envelope sender (MAIL FROM); "" for the null sender
    #[arg(long)]
    from: Option<String>,
    /// The envelope recipient (RCPT TO)
    #[arg(long)]
    rcpt: Option<String>,
    #[command(flatten)]
    files: FileArgs,
    /// The session authenticated (SMTP AUTH); prefer --user, which also checks the sender
    #[arg(long)]
    authenticated: bool,
    /// The user the session authenticated as (implies --authenticated): MAIL FROM must be an
    /// address this user may send as, as on the node
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// The client did not start TLS (by default it did wherever the farm offers TLS)
    #[arg(long)]
    no_tls: bool,
    /// A DNS list's answer: ZONE=127.0.0.2[,127.0.0.4] or ZONE=none or ZONE=error
    #[arg(long, value_name = "ZONE=ANSWER")]
    dnsbl: Vec<String>,
    /// The sender domain's DNS status: resolves, nxdomain, null-mx, tempfail
    #[arg(long)]
    sender_domain: Option<String>,
    /// The HELO name's DNS status: resolves, nxdomain, tempfail
    #[arg(long)]
    helo_dns: Option<String>,
    /// The greylist state of the triplet: pass or defer
    #[arg(long)]
    greylist: Option<String>,
    /// The directory's answer for the recipient: known, unknown or unavailable
    #[arg(long)]
    directory: Option<String>,
    /// The client's reverse DNS: confirmed:NAME, unconfirmed:NAME, none or tempfail
    #[arg(long, value_name = "STATUS")]
    reverse_dns: Option<String>,
    /// The SPF verdict on MAIL FROM: pass, fail, softfail, neutral, none, temperror, permerror
    #[arg(long, value_name = "RESULT")]
    spf: Option<String>,
    /// A DKIM signature's verdict, DOMAIN=RESULT (pass, fail, neutral, none, temperror,
    /// permerror); repeat for each signature
    #[arg(long, value_name = "DOMAIN=RESULT")]
    dkim: Vec<String>,
    /// The ARC chain's verdict, its newest sealer and the author domain that sealer recorded
    /// dmarc=pass for: RESULT[:SEALER[:DOMAIN]] (pass, fail, none…)
    #[arg(long, value_name = "RESULT[:SEALER[:DOMAIN]]")]
    arc: Option<String>,
    /// The DMARC verdict, the policy the author domain publishes and that domain (default: the
    /// sender's): RESULT[:POLICY[:DOMAIN]], e.g. fail:reject
    #[arg(long, value_name = "RESULT[:POLICY[:DOMAIN]]")]
    dmarc: Option<String>,
    /// A milter's or hook's verdict on the message, NAME=VERDICT (continue, reject, tempfail,
    /// discard, quarantine, unavailable, unsupported), or a milter's at MAIL or RCPT,
    /// NAME=VERDICT@mail or @rcpt; repeat for each filter and stage
    #[arg(long, value_name = "NAME=VERDICT[@STAGE]")]
    milter: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The ruleset file to serve (or use --policy)
    #[arg(required_unless_present = "policy", conflicts_with = "policy")]
    pub ruleset: Option<PathBuf>,
    /// Compile this policy in memory and serve it (one-machine use)
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<PathBuf>,
    /// Log as JSON lines instead of text (same as --log-format json)
    #[arg(long)]
    pub log_json: bool,
    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also send logs to syslog (RFC 5424): udp://HOST:PORT, unix:///dev/log or a socket path
    #[arg(long, value_name = "TARGET")]
    pub syslog: Option<crate::logging::SyslogTarget>,
    /// The admin listener (metrics, health, status): ADDRESS:PORT, or "off"; default: the
    /// policy's `admin` (127.0.0.1:9325 when it says nothing)
    #[arg(long, value_name = "ADDRESS|off", value_parser = parse_admin)]
    pub admin: Option<mtac_runtime::AdminAddress>,
    #[command(flatten)]
    pub files: FileArgs,
    /// Seconds sessions may take to finish after SIGTERM before they are told 421
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub grace: u64,
    /// A candidate ruleset to compare every decision with, never enforced: its differences
    /// are logged ("shadow ruleset differs") and counted; reloaded when the file changes
    #[arg(long, value_name = "CANDIDATE")]
    pub shadow: Option<PathBuf>,
    /// Threads serving sessions (default: one per CPU the node may use). The first serves
    /// every session until it is busy (90% of a CPU), then new ones go to the next.
    /// Fewer when the machine's other CPUs are reserved for something else (a scanner, the
    /// back end)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_admin(text: &str) -> Result<mtac_runtime::AdminAddress, String> {
    if text == "off" {
        return Ok(mtac_runtime::AdminAddress::Off);
    }
    text.parse()
        .map(mtac_runtime::AdminAddress::At)
        .map_err(|_| format!("`{text}` is not ADDRESS:PORT (e.g. 127.0.0.1:9325) or \"off\""))
}

pub fn dispatch(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Check { policy, output, files } => Ok(check(&policy, &output, None, files.options()?)),
        Command::Build { policy, output, export_directory, format, files } => {
            let options = mtac_compiler::Options { export_directory, entry_sources: true, ..files.options()? };
            Ok(check(&policy, &format, Some(&output), options))
        }
        Command::Inspect { ruleset, settings: true, farm, format } => {
            inspect_settings(&ruleset, farm.as_deref(), format)
        }
        Command::Inspect { ruleset, settings: false, farm: _, format } => inspect(&ruleset, format),
        Command::Lookup(args) => crate::lookup::lookup(&args),
        Command::Explain(args) => explain(*args),
        Command::Diff(args) => crate::diff::diff(&args),
        Command::Test { tests, files } => run_tests(&tests, &files),
        Command::Run(args) => crate::cli::run(args),
        Command::Status(args) => crate::status::status(&args),
        Command::State(args) => crate::status::state(&args),
        Command::LogLevel(args) => crate::status::log_level(&args),
        Command::Trace(args) => crate::status::trace(&args),
        Command::DkimRecord(args) => crate::dkim_record::dkim_record(&args),
        Command::HashPassword(args) => crate::tools::hash_password(&args),
        Command::ManPages(args) => crate::tools::man_pages(&args),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics when its writer fails.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mtac", &mut script);
            crate::output::stdout_bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_diagnostics(compilation: &Compilation, format: Format, name: &Path) {
    match format {
        Format::Human => {
            let color = std::io::stderr().is_terminal();
            for d in &compilation.diagnostics.list {
                eprint!("{}", diag::render(d, color));
            }
            let (e, w) = (compilation.diagnostics.errors(), compilation.diagnostics.warnings());
            if e + w > 0 {
                eprintln!("{}: {e} error(s), {w} warning(s)", name.display());
            }
        }
        Format::Json => {
            let list: Vec<diag::JsonDiag> = compilation.diagnostics.list.iter().map(Diag::to_json).collect();
            match serde_json::to_string_pretty(&list) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("mtac: cannot encode diagnostics: {e}"),
            }
        }
    }
}

/// `check`, and `build` when `output` is given.
fn check(policy: &Path, args: &OutputArgs, output: Option<&Path>, options: mtac_compiler::Options) -> ExitCode {
    let compilation = mtac_compiler::compile_path_with(policy, &options);
    print_diagnostics(&compilation, args.format, policy);
    if compilation.files.is_empty() {
        return ExitCode::from(2);
    }
    // `mtac check` may pass a policy whose directory is exported at build time; a built
    // ruleset without that export would accept every address.
    let unexported =
        output.is_some() && compilation.diagnostics.list.iter().any(|d| d.code == "mtac::directory::not-exported");
    let denied = (args.deny_warnings && compilation.diagnostics.warnings() > 0) || unexported;
    let Some(out) = compilation.output.filter(|_| !denied) else {
        return ExitCode::from(1);
    };
    if let Some(path) = output {
        // The sources first: a ruleset on disk then always has the file naming its entries'
        // sources (a leftover one for a ruleset never written names another hash and is refused).
        if let Some(sources) = &out.sources {
            let sources_path = mtac_compiler::sources::path_for(path);
            if let Err(e) = mtac_ruleset::container::write_atomic(&sources_path, sources.render().as_bytes()) {
                eprintln!("mtac: cannot write {}: {e}", sources_path.display());
                return ExitCode::from(2);
            }
        }
        if let Err(e) = mtac_ruleset::container::write_atomic(path, &out.bytes) {
            eprintln!("mtac: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        if args.format == Format::Human {
            eprintln!("wrote {} ({} bytes, hash {})", path.display(), out.bytes.len(), out.ruleset.hash_hex());
        }
    } else if args.format == Format::Human {
        eprintln!("{}: ok ({} farm(s))", policy.display(), out.ruleset.policy().farms.len());
    }
    ExitCode::SUCCESS
}

pub(crate) fn load_ruleset(path: Option<&Path>, policy: Option<&Path>, files: &FileArgs) -> Result<Ruleset, String> {
    load_ruleset_with_sources(path, policy, files, false).map(|(ruleset, _)| ruleset)
}

/// A ruleset (a file, or a policy compiled in memory), with where its table entries were
/// written when asked: from `RULESET.sources` beside the file, or from the compilation. The
/// sources' error says why they are missing; the ruleset works without them.
pub(crate) fn load_ruleset_with_sources(
    path: Option<&Path>,
    policy: Option<&Path>,
    files: &FileArgs,
    with_sources: bool,
) -> Result<(Ruleset, Result<EntrySources, String>), String> {
    let not_asked = || Err("not asked for".to_owned());
    match (path, policy) {
        (Some(path), _) => {
            let ruleset = Ruleset::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let sources = if with_sources { EntrySources::load_for(path, &ruleset) } else { not_asked() };
            Ok((ruleset, sources))
        }
        (None, Some(policy)) => {
            let options = mtac_compiler::Options { entry_sources: with_sources, ..files.options()? };
            let compilation = mtac_compiler::compile_path_with(policy, &options);
            print_diagnostics(&compilation, Format::Human, policy);
            let output = compilation.output.ok_or_else(|| format!("{} does not compile", policy.display()))?;
            Ok((output.ruleset, output.sources.ok_or_else(|| "not recorded".to_owned())))
        }
        (None, None) => Err("give a ruleset file or --policy".to_owned()),
    }
}

/// `mtac inspect --settings`: the KDL print of `mtac_compiler::settings`, or the model as JSON.
fn inspect_settings(path: &Path, farm: Option<&str>, format: Format) -> Result<ExitCode, String> {
    let ruleset = load_ruleset(Some(path), None, &FileArgs::default())?;
    let policy = ruleset.policy();
    let request = mtac_compiler::settings::Request { farm };
    let text = mtac_compiler::settings::print(policy, &request)?;
    if format == Format::Human {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut selected = policy.clone();
    selected.farms.retain(|f| farm.is_none_or(|name| f.name == name));
    println!("{}", serde_json::to_string_pretty(&selected).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}

fn inspect(path: &Path, format: Format) -> Result<ExitCode, String> {
    let ruleset = load_ruleset(Some(path), None, &FileArgs::default())?;
    let policy = ruleset.policy();
    let container = ruleset.container();
    if format == Format::Json {
        let tables: Vec<serde_json::Value> = policy
            .tables
            .iter()
            .zip(ruleset.tables())
            .map(|(info, table)| {
                serde_json::json!({
                    "name": info.name, "kind": format!("{:?}", info.kind).to_lowercase(),
                    "entries": info.entries, "bytes": table.byte_len(), "sources": info.sources,
                })
            })
            .collect();
        let farms: Vec<serde_json::Value> = policy
            .farms
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name, "kind": f.kind.as_str(),
                    "listeners": f.listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format_version": container.format_version(), "compiler": container.compiler_version(),
            "hash": ruleset.hash_hex(), "bytes": container.len(), "hostname": policy.hostname,
            "admin": policy.admin.map(|a| a.to_string()), "farms": farms, "tables": tables,
        });
        println!("{}", serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("ruleset   {}", path.display());
    println!("format    {} (written by {})", container.format_version(), container.compiler_version());
    println!("hash      {}", ruleset.hash_hex());
    println!("size      {} bytes", container.len());
    println!("hostname  {}", policy.hostname);
    println!("spool     {}", policy.spool);
    println!("admin     {}", policy.admin.map_or_else(|| "off".to_owned(), |a| a.to_string()));
    println!();
    for farm in &policy.farms {
        let listeners: Vec<String> = farm
            .listeners
            .iter()
            .map(|l| {
                let tls = if l.implicit_tls { " (tls)" } else { "" };
                let proxy: Vec<String> = l.proxy_from.iter().map(ToString::to_string).collect();
                let proxy = if proxy.is_empty() { String::new() } else { format!(" (proxy from {})", proxy.join(" ")) };
                format!("{}{tls}{proxy}", l.address)
            })
            .collect();
        println!("farm {} ({})", farm.name, farm.kind.as_str());
        println!("  listen     {}", listeners.join(", "));
        let relay = match &farm.relay {
            Relay::Backends(b) => b
                .iter()
                .map(|b| format!("{:?} {}", b.protocol, b.address).to_lowercase())
                .collect::<Vec<_>>()
                .join(", "),
            Relay::Maildir(dir) => format!("maildir {dir}"),
        };
        println!("  relay      {relay}");
        for stage in mtac_ruleset::model::Stage::ALL {
            let rules: Vec<&str> = farm.program.stage(stage).iter().map(|s| s.rule.as_str()).collect();
            if !rules.is_empty() {
                println!("  at {:<8}{}", stage.as_str(), rules.join(", "));
            }
        }
    }
    println!();
    println!("{:<36} {:<10} {:>10} {:>12}  sources", "table", "kind", "entries", "bytes");
    for (info, table) in policy.tables.iter().zip(ruleset.tables()) {
        let kind = match info.kind {
            TableKind::Domains => "domains",
            TableKind::Addresses => "addresses",
            TableKind::Prefixes => "prefixes",
        };
        let extra = match table {
            Table::Prefixes(p) => format!(" ({} intervals)", p.interval_count()),
            _ => String::new(),
        };
        println!(
            "{:<36} {:<10} {:>10} {:>12}  {}{extra}",
            info.name,
            kind,
            info.entries,
            table.byte_len(),
            info.sources.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn explain(args: ExplainArgs) -> Result<ExitCode, String> {
    let (ruleset, sources) =
        load_ruleset_with_sources(args.ruleset.as_deref(), args.policy.as_deref(), &args.files, true)?;
    let farm = match &args.farm {
        Some(name) => ruleset.farm(name).ok_or_else(|| format!("no farm `{name}` in the ruleset"))?,
        None => ruleset.policy().farms.first().ok_or("the ruleset has no farm")?,
    };
    let mut session = Session {
        client: args.client_ip,
        helo: args.helo.clone(),
        from: args.from.clone(),
        rcpt: args.rcpt.clone(),
        authenticated: args.authenticated || args.user.is_some(),
        user: args.user.clone(),
        tls: args.no_tls.then_some(false),
        ..Session::default()
    };
    sender_auth_flags(&args, &mut session)?;
    for flag in &args.dnsbl {
        let (zone, answer) = flag.split_once('=').ok_or_else(|| format!("--dnsbl {flag}: write ZONE=ANSWER"))?;
        let answer = policytest::parse_list_answer(answer)
            .ok_or_else(|| format!("--dnsbl {flag}: the answer is an IPv4 address list, none or error"))?;
        session.dns.lists.push((zone.to_owned(), answer));
    }
    if let Some(status) = &args.sender_domain {
        session.dns.sender_domain = Some(
            policytest::parse_domain_status(status)
                .ok_or_else(|| format!("--sender-domain {status}: resolves, nxdomain, null-mx or tempfail"))?,
        );
    }
    if let Some(status) = &args.helo_dns {
        session.dns.helo_name = Some(
            policytest::parse_domain_status(status)
                .ok_or_else(|| format!("--helo-dns {status}: resolves, nxdomain or tempfail"))?,
        );
    }
    if let Some(status) = &args.reverse_dns {
        session.dns.reverse =
            Some(policytest::parse_reverse(status).ok_or_else(|| {
                format!("--reverse-dns {status}: confirmed:NAME, unconfirmed:NAME, none or tempfail")
            })?);
    }
    if let Some(status) = &args.greylist {
        session.greylist =
            Some(policytest::parse_greylist(status).ok_or_else(|| format!("--greylist {status}: pass or defer"))?);
    }
    if let Some(answer) = &args.directory {
        let answer = policytest::parse_directory(answer)
            .ok_or_else(|| format!("--directory {answer}: known, unknown or unavailable"))?;
        session.directory = Some(answer);
    }
    let recorder = Recorder::new(&ruleset);
    let (simulation, outcome) = policytest::run_session_with(&recorder, &ruleset, farm, &session);
    println!("farm {} ({}), ruleset {}", farm.name, farm.kind.as_str(), ruleset.hash_hex());
    for (stage, decision) in &simulation.stages {
        println!("{}:", stage.as_str());
        if let Some(why) = &decision.trusted {
            println!("  (trusted: {why})");
        }
        if decision.trace.is_empty() {
            println!("  no rules at this stage");
        }
        for line in &decision.trace {
            let text = match &line.outcome {
                StepOutcome::Passed(why) => format!("pass     {why}"),
                StepOutcome::Pending => {
                    "pending  the node asks its state store (give --greylist pass|defer)".to_owned()
                }
                StepOutcome::AskDirectory => {
                    "pending  the node asks the directory (give --directory known|unknown|unavailable)".to_owned()
                }
                StepOutcome::UserNotGiven => {
                    "pending  the node checks the user owns the sender (give --user NAME)".to_owned()
                }
                StepOutcome::NotGiven("spf") => {
                    "pending  the node checks SPF here (give --spf pass|fail|softfail|neutral|none|temperror|permerror)"
                        .to_owned()
                }
                StepOutcome::NotGiven("milter") => {
                    "pending  the node asks this filter here (give --milter NAME=continue|reject|tempfail|…)".to_owned()
                }
                StepOutcome::NotGiven(fact) => {
                    format!(
                        "pending  the node verifies the message here (give --{fact} RESULT[:POLICY], e.g. fail:reject)"
                    )
                }
                StepOutcome::Skipped(why) => format!("skipped  {why}"),
                StepOutcome::Accepted(why) => format!("accept   {why}"),
                StepOutcome::Decided(reply) => format!("REFUSE   {reply}"),
                StepOutcome::WouldRefuse(reply) => format!("shadow   would refuse: {reply} (not enforced)"),
            };
            println!("  {:<24} {text}", line.rule);
        }
    }
    crate::lookup::print_matched(&ruleset, &sources, &recorder.into_looked());
    match outcome.stage {
        Some(_) => println!("=> {outcome}"),
        None => println!("=> accepted: the recipient would be relayed to the back end (whose own answer counts)"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `--spf`, `--dkim`, `--arc`, `--dmarc`: the verdicts a node's sender authentication finds;
/// `--milter`: its filters' verdicts.
fn sender_auth_flags(args: &ExplainArgs, session: &mut Session) -> Result<(), String> {
    use mtac_ruleset::sender_auth;
    if let Some(result) = &args.spf {
        session.dns.spf =
            Some(mtac_ruleset::eval::SpfResult::parse(result).ok_or_else(|| {
                format!("--spf {result}: pass, fail, softfail, neutral, none, temperror or permerror")
            })?);
    }
    for flag in &args.dkim {
        let verdict = sender_auth::parse_dkim(flag)
            .ok_or_else(|| format!("--dkim {flag}: DOMAIN=RESULT (pass, fail, neutral, none, temperror, permerror)"))?;
        session.message.dkim.push(verdict);
    }
    if let Some(flag) = &args.arc {
        session.message.arc =
            Some(sender_auth::parse_arc(flag).ok_or_else(|| {
                format!("--arc {flag}: RESULT[:SEALER[:DOMAIN]], e.g. pass:lists.example:bank.example")
            })?);
    }
    if let Some(flag) = &args.dmarc {
        session.message.dmarc = Some(
            sender_auth::parse_dmarc(flag, session.from.as_deref())
                .ok_or_else(|| format!("--dmarc {flag}: RESULT[:POLICY[:DOMAIN]], e.g. fail:reject"))?,
        );
    }
    for flag in &args.milter {
        let given = mtac_ruleset::filters::parse_given(flag).ok_or_else(|| {
            format!(
                "--milter {flag}: NAME=VERDICT[@mail|@rcpt] ({}; before the message only continue, reject, \
                 tempfail, discard or unavailable)",
                mtac_ruleset::filters::FilterVerdict::NAMES
            )
        })?;
        session.message.filters.push(given);
    }
    Ok(())
}

fn collect_tests(paths: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<(), String> {
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
            out.extend(files.into_iter().filter(|p| p.to_string_lossy().ends_with(".test.kdl")));
            collect_tests(&dirs, out)?;
        } else {
            out.push(path.clone());
        }
    }
    Ok(())
}

fn run_tests(paths: &[PathBuf], file_args: &FileArgs) -> Result<ExitCode, String> {
    let options = file_args.options()?;
    let mut files = Vec::new();
    collect_tests(paths, &mut files)?;
    if files.is_empty() {
        return Err("no *.test.kdl files found".to_owned());
    }
    let color = std::io::stderr().is_terminal();
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    for file in &files {
        let mut diags = mtac_compiler::diag::Diagnostics::default();
        let loaded = policytest::load(file, &mut diags);
        for d in &diags.list {
            eprint!("{}", diag::render(d, color));
        }
        let Some(test_file) = loaded.filter(|_| !diags.has_errors()) else {
            broken += 1;
            continue;
        };
        let compilation = mtac_compiler::compile_path_with(&test_file.policy, &options);
        let Some(output) = compilation.output else {
            print_diagnostics(&compilation, Format::Human, &test_file.policy);
            eprintln!("{}: the policy {} does not compile", file.display(), test_file.policy.display());
            broken += 1;
            continue;
        };
        for test in &test_file.tests {
            match test.check(&output.ruleset) {
                Ok(_) => {
                    passed += 1;
                    println!("ok    {} :: {}", file.display(), test.name);
                }
                Err((got, want)) => {
                    failed += 1;
                    println!("FAIL  {}:{} :: {}", file.display(), test.line, test.name);
                    println!("      - expected: {want}");
                    match got {
                        Some(got) => println!("      + got:      {got}"),
                        None => println!("      + error:    {want}"),
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed, {broken} file(s) broken");
    Ok(if failed + broken == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn run(args: RunArgs) -> Result<ExitCode, String> {
    // Dropped last: lines queued until the very end are written out.
    let _logs = crate::logging::init(&crate::logging::LogSettings {
        json: args.log_json || args.log_format == LogFormat::Json,
        syslog: args.syslog.clone(),
    })?;
    let (loader, watch): (mtac_runtime::Loader, PathBuf) = match (args.ruleset, args.policy) {
        (Some(path), _) => {
            let p = path.clone();
            (std::sync::Arc::new(move || Ruleset::open_sealed(&p).map_err(|e| format!("{}: {e}", p.display()))), path)
        }
        (None, Some(policy)) => {
            let p = policy.clone();
            let options = args.files.options()?;
            let loader = move || {
                let compilation = mtac_compiler::compile_path_with(&p, &options);
                match compilation.output {
                    Some(out) => Ok(out.ruleset),
                    None => {
                        let first = compilation.diagnostics.list.iter().find(|d| d.is_error());
                        Err(format!(
                            "{} does not compile ({} error(s); first: {}); run `mtac check` for details",
                            p.display(),
                            compilation.diagnostics.errors(),
                            first.map_or_else(String::new, |d| d.message.clone())
                        ))
                    }
                }
            };
            (std::sync::Arc::new(loader), policy)
        }
        (None, None) => return Err("give a ruleset file or --policy".to_owned()),
    };
    // The node's own runtime: signals, reloads, the admin listener, probes. Sessions run on
    // session threads of their own (`mtac_runtime::node`'s `threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("mtac-blocking")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    // One per CPU this process may use (its affinity and cgroup quota).
    let session_threads =
        args.workers.map_or_else(|| std::thread::available_parallelism().map_or(1, usize::from), usize::from);
    let candidate = match args.shadow {
        Some(path) => {
            let p = path.clone();
            let loader: mtac_runtime::Loader =
                std::sync::Arc::new(move || Ruleset::open_sealed(&p).map_err(|e| format!("{}: {e}", p.display())));
            // A candidate that cannot be read is a mistake to hear about now, not in a log line.
            loader().map_err(|e| format!("the shadow ruleset cannot be loaded: {e}"))?;
            Some(mtac_runtime::CandidateConfig { loader, watch: Some(path) })
        }
        None => None,
    };
    let config = mtac_runtime::RunConfig {
        loader,
        watch: Some(watch),
        grace: std::time::Duration::from_secs(args.grace),
        admin: args.admin.unwrap_or(mtac_runtime::AdminAddress::Policy),
        candidate,
        session_threads,
        busy_share: mtac_runtime::BUSY_SHARE,
        thread_name: "mtac-session".to_owned(),
    };
    let result = runtime.block_on(mtac_runtime::run(config));
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.to_string()),
    }
}
