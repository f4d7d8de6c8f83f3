//! `mtac status NODE…`: ask each node's admin listener for its `/status` and say plainly whether
//! the farm has converged on one ruleset (and, with `--ruleset`, on the file just pushed).
//!
//! Exit codes: 0 every node answered and all run the same (expected) ruleset; 1 they diverge,
//! one runs another ruleset than expected, or one did not answer; 2 usage errors.

use clap::{Args, ValueEnum};
use mtac_runtime::admin::Status;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Nodes' admin listeners: HOST[:PORT] (port 9325 when not given)
    #[arg(required = true, value_name = "NODE")]
    nodes: Vec<String>,
    /// The ruleset file just pushed: every node must run it
    #[arg(long, value_name = "FILE", conflicts_with = "expect")]
    ruleset: Option<PathBuf>,
    /// The ruleset hash every node must run (as `mtac inspect` prints it)
    #[arg(long, value_name = "HASH")]
    expect: Option<String>,
    /// Seconds to wait for each node
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    timeout: u64,
    /// Output format
    #[arg(long, value_enum, default_value_t = StatusFormat::Human)]
    format: StatusFormat,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum StatusFormat {
    Human,
    Json,
}

/// `HOST` → `HOST:9325`; `::1` → `[::1]:9325`; `HOST:PORT` and `[V6]:PORT` unchanged.
fn with_port(node: &str) -> String {
    let default = mtac_ruleset::model::DEFAULT_ADMIN.port();
    if node.parse::<std::net::SocketAddr>().is_ok() {
        return node.to_owned();
    }
    if node.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{node}]:{default}");
    }
    match node.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => node.to_owned(),
        _ => format!("{node}:{default}"),
    }
}

pub fn status(args: &StatusArgs) -> Result<ExitCode, String> {
    let expected = match (&args.ruleset, &args.expect) {
        (Some(path), _) => {
            Some(mtac_ruleset::Ruleset::open(path).map_err(|e| format!("{}: {e}", path.display()))?.hash_hex())
        }
        (None, Some(hash)) => Some(hash.to_ascii_lowercase()),
        (None, None) => None,
    };
    let runtime = client_runtime()?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let nodes: Vec<String> = args.nodes.iter().map(|n| with_port(n)).collect();
    let answers: Vec<Result<Status, String>> = runtime.block_on(async {
        // All at once: a farm of many nodes answers in one timeout, not one per node.
        let asks: Vec<_> = nodes.iter().cloned().map(|node| tokio::spawn(ask(node, timeout))).collect();
        let mut answers = Vec::with_capacity(asks.len());
        for ask in asks {
            answers.push(ask.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        answers
    });

    let now = mtac_runtime::metrics::unix_now();
    let mut hashes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unreachable = 0usize;
    for (node, answer) in nodes.iter().zip(&answers) {
        match answer {
            Ok(s) => hashes.entry(s.ruleset.as_str()).or_default().push(node),
            Err(_) => unreachable += 1,
        }
    }
    let converged = unreachable == 0 && hashes.len() == 1;
    let on_expected = match &expected {
        Some(want) => hashes.len() == 1 && hashes.keys().all(|h| h.starts_with(want.as_str())),
        None => true,
    };
    let ok = converged && on_expected;

    if args.format == StatusFormat::Json {
        let rows: Vec<_> = nodes
            .iter()
            .zip(&answers)
            .map(|(node, a)| match a {
                Ok(s) => serde_json::json!({ "node": node, "status": s }),
                Err(e) => serde_json::json!({ "node": node, "error": e }),
            })
            .collect();
        let out = serde_json::json!({
            "converged": converged,
            "expected": expected,
            "on_expected": on_expected,
            "rulesets": hashes,
            "nodes": rows,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }

    let width = nodes.iter().map(String::len).max().unwrap_or(4).max(4);
    println!(
        "{:<width$}  {:<8}  {:<12}  {:>9}  {:>9}  {:>6}  {:>8}  LAST RELOAD ERROR",
        "NODE", "STATE", "RULESET", "LOADED", "UPTIME", "CONNS", "RELOADS"
    );
    for (node, answer) in nodes.iter().zip(&answers) {
        match answer {
            Ok(s) => println!(
                "{node:<width$}  {:<8}  {:<12}  {:>9}  {:>9}  {:>6}  {:>8}  {}",
                s.state,
                s.ruleset.get(..12).unwrap_or(&s.ruleset),
                format!("{} ago", age(now - s.ruleset_loaded_at)),
                age(now - s.started_at),
                s.connections_active,
                format!("{}/{}", s.reloads_ok, s.reloads_failed),
                s.last_reload_error.as_deref().unwrap_or("-"),
            ),
            Err(e) => println!("{node:<width$}  {:<8}  {e}", "DOWN"),
        }
    }
    println!();
    match hashes.len() {
        0 => println!("no node answered"),
        1 if converged => {
            let hash = hashes.keys().next().copied().unwrap_or_default();
            println!("converged: all {} node(s) run ruleset {}", nodes.len(), hash.get(..12).unwrap_or(hash));
        }
        _ => {
            println!(
                "NOT converged: {} ruleset(s) in use{}",
                hashes.len(),
                if unreachable > 0 { format!(", {unreachable} node(s) did not answer") } else { String::new() }
            );
            for (hash, on) in &hashes {
                println!("  {}  {}", hash.get(..12).unwrap_or(hash), on.join(" "));
            }
        }
    }
    if let Some(want) = &expected {
        if on_expected {
            println!("every node that answered runs the expected ruleset {}", want.get(..12).unwrap_or(want));
        } else {
            println!("NOT on the expected ruleset {}", want.get(..12).unwrap_or(want));
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[derive(Args, Debug)]
pub struct StateArgs {
    /// The node's admin socket (policy: `admin socket=`; default: admin.sock in the default spool)
    #[arg(value_name = "SOCKET")]
    socket: Option<PathBuf>,
    /// Show what the store knows of this client address (its key, deliveries, bans)
    #[arg(long, value_name = "IP")]
    client: Option<String>,
    /// With --client and --recipient: show this triplet's entry
    #[arg(long, requires = "client")]
    sender: Option<String>,
    #[arg(long, requires = "client")]
    recipient: Option<String>,
    /// The client key to use instead of the client's network (e.g. dns:example.com for key="fcrdns")
    #[arg(long, requires = "client")]
    key: Option<String>,
    /// Lift the bans covering this address, or the ban of exactly this network (with Redis, on
    /// the whole farm)
    #[arg(long, value_name = "ADDRESS|NETWORK", conflicts_with_all = ["client", "sender", "recipient", "key"])]
    unban: Option<String>,
    /// The farm: whose greylisting to show (default: the first that greylists), or whose bans to
    /// lift (default: every farm's; `*` for bans that hold for every farm)
    #[arg(long)]
    farm: Option<String>,
    /// List the greylist triplets (of --client, or all), a page at a time
    #[arg(long, conflicts_with_all = ["unban", "delete", "whitelist", "sender", "recipient"])]
    list: bool,
    /// With --list: list the whitelist counts (auto-whitelisted and operator-whitelisted clients)
    #[arg(long, requires = "list")]
    whitelisted: bool,
    /// With --list: the most entries one page shows (at most 1000)
    #[arg(long, requires = "list", default_value_t = 100)]
    limit: usize,
    /// With --list: the page after this cursor (the previous page prints it)
    #[arg(long, requires = "list", value_name = "CURSOR")]
    after: Option<String>,
    /// Delete the greylist triplets of --client (or one, with --sender and --recipient): its next
    /// attempt is greylisted afresh
    #[arg(long, requires = "client", conflicts_with_all = ["unban", "whitelist"])]
    delete: bool,
    /// Whitelist --client: greylisting passes it for the farm's greylist lifetime, whatever its
    /// auto-whitelist
    #[arg(long, requires = "client", conflicts_with_all = ["unban", "sender", "recipient"])]
    whitelist: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = StatusFormat::Human)]
    format: StatusFormat,
}

/// A client's runtime: one thread, for one request.
fn client_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The admin socket given, or the default one (admin.sock in the default spool).
fn admin_socket(given: Option<&PathBuf>) -> PathBuf {
    given.cloned().unwrap_or_else(|| {
        PathBuf::from(mtac_ruleset::model::DEFAULT_SPOOL).join(mtac_ruleset::model::ADMIN_SOCKET_NAME)
    })
}

fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `mtac state [SOCKET]`: the node's greylist and ban state, like OpenBSD's spamdb, asked on its
/// admin socket (the TCP listener does not answer state queries: it would tell anyone who can
/// reach it who wrote to whom).
pub fn state(args: &StateArgs) -> Result<ExitCode, String> {
    let socket = admin_socket(args.socket.as_ref());
    let mut query = Vec::new();
    let fields: [(&str, &Option<String>); 6] = [
        ("client", &args.client),
        ("sender", &args.sender),
        ("recipient", &args.recipient),
        ("key", &args.key),
        ("farm", &args.farm),
        ("target", &args.unban),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            query.push(format!("{name}={}", query_escape(v)));
        }
    }
    if args.list {
        if args.whitelisted {
            query.push("kind=whitelist".to_owned());
        }
        query.push(format!("limit={}", args.limit));
        if let Some(after) = &args.after {
            query.push(format!("after={}", query_escape(after)));
        }
    }
    let (method, base) = if args.unban.is_some() {
        (hyper::Method::POST, "/unban")
    } else if args.delete {
        (hyper::Method::POST, "/state/delete")
    } else if args.whitelist {
        (hyper::Method::POST, "/state/whitelist")
    } else if args.list {
        (hyper::Method::GET, "/state/list")
    } else {
        (hyper::Method::GET, "/state")
    };
    let path = if query.is_empty() { base.to_owned() } else { format!("{base}?{}", query.join("&")) };
    let runtime = client_runtime()?;
    let (code, body) =
        runtime.block_on(mtac_runtime::admin::ask_socket(&socket, method, &path, Duration::from_secs(10)))?;
    let report: mtac_runtime::admin::StateReport = serde_json::from_str(&body)
        .map_err(|e| format!("{}: not an mtac state report (HTTP {code}): {e}", socket.display()))?;
    if args.format == StatusFormat::Json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
        let lifted_none = report.lifted.as_ref().is_some_and(Vec::is_empty);
        let ok = code == 200 && report.error.is_none() && !lifted_none;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    if let Some(e) = report.error.as_ref().filter(|_| args.list || args.delete || args.whitelist) {
        println!("error            {e}");
        return Ok(ExitCode::from(1));
    }
    if let Some(listed) = &report.listed {
        print_page(listed, report.next.as_deref(), args);
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(deleted) = report.deleted {
        let key = report.client_key.as_deref().unwrap_or("");
        if deleted == 0 {
            println!("no triplet of {key} to delete");
            return Ok(ExitCode::from(1));
        }
        println!("deleted          {deleted} triplet(s) of {key}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(seconds) = report.whitelisted_for {
        let key = report.client_key.as_deref().unwrap_or("");
        println!("whitelisted      {key}: passes greylisting for {}", age(seconds as f64));
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(lifted) = &report.lifted {
        for ban in lifted {
            println!("lifted           {}  farm {}  (had {} left)", ban.network, ban.farm, age(ban.expires_in as f64));
        }
        if let Some(e) = &report.error {
            println!("error            {e}");
            return Ok(ExitCode::from(1));
        }
        if lifted.is_empty() {
            println!("no ban covers {}", args.unban.as_deref().unwrap_or(""));
            return Ok(ExitCode::from(1));
        }
        return Ok(if code == 200 { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    println!("store            {}", if report.store.is_empty() { "-" } else { &report.store });
    if let Some(c) = &report.counts {
        println!("waiting          {} triplet(s) greylisted, not yet retried", c.waiting);
        println!("passed           {} triplet(s) that retried and pass", c.passed);
        println!("auto-whitelist   {} client(s) with deliveries counted", c.auto_whitelist);
        if report.store == "redis" {
            println!("bans             {} network(s) banned on the farm", c.bans);
        }
    }
    if let Some(key) = &report.client_key {
        println!("client key       {key}");
        if let (Some(n), Some(after)) = (report.deliveries, report.auto_whitelist_after) {
            let state = if after > 0 && n >= u64::from(after) { "auto-whitelisted" } else { "greylisted" };
            println!("deliveries       {n} (auto-whitelisted after {after}): {state}");
        }
        if args.sender.is_some() && args.recipient.is_some() {
            match &report.triplet {
                Some(t) => {
                    let now = mtac_runtime::state::unix_now();
                    println!(
                        "triplet          {}, first seen {} ago from {}, forgotten in {}",
                        if t.passed { "passed" } else { "waiting for a retry" },
                        age(now.saturating_sub(t.first_seen) as f64),
                        t.first_address,
                        age(t.expires_in as f64)
                    );
                }
                None => println!("triplet          not known (its next attempt is greylisted)"),
            }
        }
    }
    if let Some(banned) = report.banned {
        println!("banned           {}", if banned { "yes" } else { "no" });
    }
    match report.bans.as_deref() {
        Some([]) if args.client.is_none() => println!("bans in force    none"),
        Some(bans) => {
            for ban in bans {
                let farm = if ban.farm == "*" { "every farm".to_owned() } else { format!("farm {}", ban.farm) };
                println!("ban              {}  {farm}  ends in {}", ban.network, age(ban.expires_in as f64));
            }
        }
        None => {}
    }
    if let Some(e) = &report.error {
        println!("error            {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(if code == 200 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// One page of `mtac state --list`, and how to ask for the next.
fn print_page(listed: &[mtac_runtime::state::Listed], next: Option<&str>, args: &StateArgs) {
    let now = mtac_runtime::state::unix_now();
    for entry in listed {
        match (entry.passed, entry.deliveries) {
            (Some(passed), _) => println!(
                "{}  {}  first seen {} ago  forgotten in {}",
                if passed { "passed " } else { "waiting" },
                entry.key,
                age(now.saturating_sub(entry.first_seen.unwrap_or(now)) as f64),
                age(entry.expires_in as f64)
            ),
            (None, Some(n)) => {
                let who = if n >= mtac_runtime::state::OPERATOR_WHITELIST {
                    "whitelisted by an operator".to_owned()
                } else {
                    format!("{n} deliveries")
                };
                println!("{}  {who}  forgotten in {}", entry.key, age(entry.expires_in as f64));
            }
            (None, None) => println!("{}", entry.key),
        }
    }
    if listed.is_empty() {
        println!("no entries");
    }
    if let Some(cursor) = next {
        let kind = if args.whitelisted { " --whitelisted" } else { "" };
        println!("more: mtac state --list{kind} --after {cursor}");
    }
}

async fn ask(node: String, timeout: Duration) -> Result<Status, String> {
    let (code, body) = mtac_runtime::admin::get(&node, "/status", timeout).await?;
    if code != 200 {
        return Err(format!("HTTP {code}"));
    }
    serde_json::from_str::<Status>(&body).map_err(|e| format!("not an mtac status: {e}"))
}

/// "3d04h", "2h05m", "4m10s", "12s".
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_get_the_default_admin_port() {
        assert_eq!(with_port("mx1.example.net"), "mx1.example.net:9325");
        assert_eq!(with_port("mx1.example.net:9400"), "mx1.example.net:9400");
        assert_eq!(with_port("10.0.0.1"), "10.0.0.1:9325");
        assert_eq!(with_port("::1"), "[::1]:9325");
        assert_eq!(with_port("[::1]:9400"), "[::1]:9400");
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(age(12.0), "12s");
        assert_eq!(age(250.0), "4m10s");
        assert_eq!(age(7500.0), "2h05m");
        assert_eq!(age(3.0 * 86_400.0 + 4.0 * 3600.0), "3d04h");
    }
}

#[derive(Args, Debug)]
pub struct LogLevelArgs {
    /// The log filter to set, in RUST_LOG's syntax (`debug`, `warn`, `info,mtac_runtime::conn=debug`);
    /// without it, print the one in force
    level: Option<String>,
    /// The node's admin socket (policy: `admin socket=`; default: admin.sock in the default spool)
    #[arg(long, value_name = "SOCKET")]
    socket: Option<PathBuf>,
}

/// `mtac log-level [LEVEL]`: the running node's log filter, read or changed on its admin socket.
pub fn log_level(args: &LogLevelArgs) -> Result<ExitCode, String> {
    let socket = admin_socket(args.socket.as_ref());
    let (method, path) = match &args.level {
        Some(level) => (hyper::Method::POST, format!("/log-level?level={}", query_escape(level))),
        None => (hyper::Method::GET, "/log-level".to_owned()),
    };
    let runtime = client_runtime()?;
    let (code, body) =
        runtime.block_on(mtac_runtime::admin::ask_socket(&socket, method, &path, Duration::from_secs(10)))?;
    if code == 200 {
        println!("{}", body.trim_end());
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("mtac: {}: {}", socket.display(), body.trim_end());
        Ok(ExitCode::from(1))
    }
}

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// Only the clients in this network (or this address)
    #[arg(long, value_name = "CIDR")]
    client: Option<String>,
    /// Only this farm's sessions
    #[arg(long)]
    farm: Option<String>,
    /// The node's admin socket (policy: `admin socket=`; default: admin.sock in the default spool)
    #[arg(long, value_name = "SOCKET")]
    socket: Option<PathBuf>,
    /// Stop after this many lines (default: until interrupted)
    #[arg(long, value_name = "N")]
    lines: Option<u64>,
    /// The sessions' SMTP dialogue too: each command (`<`) and reply (`>`), never a message's
    /// content or an AUTH payload
    #[arg(long)]
    dialogue: bool,
}

/// `mtac trace`: the running node's decision lines for some clients, as they happen.
pub fn trace(args: &TraceArgs) -> Result<ExitCode, String> {
    let socket = admin_socket(args.socket.as_ref());
    let mut query = Vec::new();
    if let Some(client) = &args.client {
        query.push(format!("client={}", query_escape(client)));
    }
    if let Some(farm) = &args.farm {
        query.push(format!("farm={}", query_escape(farm)));
    }
    if args.dialogue {
        query.push("dialogue=1".to_owned());
    }
    let path = if query.is_empty() { "/trace".to_owned() } else { format!("/trace?{}", query.join("&")) };
    let runtime = client_runtime()?;
    let mut left = args.lines;
    runtime.block_on(mtac_runtime::admin::stream_socket(&socket, &path, |chunk| {
        crate::output::stdout_bytes(chunk);
        let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        left = left.map(|n| n.saturating_sub(lines));
        !crate::output::failed() && left != Some(0)
    }))?;
    Ok(ExitCode::SUCCESS)
}
