//! `mtac inspect --settings`: every effective setting of a compiled policy, printed back in the
//! policy's own KDL so that it can be pasted into a policy (Postfix's `postconf -n` and
//! `postconf -d` in one listing).
//!
//! The printer is driven by the model: each struct is destructured field by field, so a field
//! added to [`mtac_ruleset::model`] does not compile here until it is printed (or deliberately
//! named as not printable). Values equal to the farm kind's default are marked `// default`;
//! the defaults are what the compiler itself fills in for a minimal farm of the same kind
//! ([`defaults`]), so this module holds no second copy of them.
//!
//! Lists (tables) are not in the ruleset as the policy wrote them (the files and inline values
//! are compiled into lookup structures): they are printed as comments naming the table, its
//! entry count and its sources.

mod farm;

use mtac_ruleset::model::{DnsSettings, FarmKind, JournalSettings, Policy, Reply, StateSettings, TableId};
use std::collections::HashSet;
use std::fmt::Write as _;

/// A printed line: the node path above it (for comparing with the defaults), its depth and text.
struct Line {
    parent: String,
    depth: usize,
    text: String,
    /// A setting, comparable with the default's; comments and braces are not.
    setting: bool,
}

/// Builds the lines of a KDL document, nested.
#[derive(Default)]
struct Printer {
    lines: Vec<Line>,
    path: Vec<String>,
}

impl Printer {
    fn parent(&self) -> String {
        self.path.join("/")
    }

    fn leaf(&mut self, text: impl Into<String>) {
        let line = Line { parent: self.parent(), depth: self.path.len(), text: text.into(), setting: true };
        self.lines.push(line);
    }

    fn comment(&mut self, text: impl AsRef<str>) {
        let line = Line {
            parent: self.parent(),
            depth: self.path.len(),
            text: format!("// {}", text.as_ref()),
            setting: false,
        };
        self.lines.push(line);
    }

    /// `head {` … `}`; `key` names the block in paths (farms are all `farm`, so that one farm is
    /// compared with the default farm of its kind). A block whose body prints nothing is
    /// printed as `head` alone.
    fn block(&mut self, key: &str, head: impl Into<String>, body: impl FnOnce(&mut Printer)) {
        let head = head.into();
        let at = self.lines.len();
        // An opener with properties is a setting too (`greylist delay=… {`); a bare one is not.
        let setting = head != key;
        let line = Line { parent: self.parent(), depth: self.path.len(), text: format!("{head} {{"), setting };
        self.lines.push(line);
        self.path.push(key.to_owned());
        body(self);
        self.path.pop();
        if self.lines.len() == at + 1 {
            if let Some(line) = self.lines.get_mut(at) {
                line.text = head;
                line.setting = true;
            }
        } else {
            let line = Line { parent: self.parent(), depth: self.path.len(), text: "}".to_owned(), setting: false };
            self.lines.push(line);
        }
    }

    /// The settings as `(parent, text)` pairs, to mark another print's defaults.
    fn settings(&self) -> HashSet<(String, String)> {
        self.lines.iter().filter(|l| l.setting).map(|l| (l.parent.clone(), l.text.clone())).collect()
    }

    fn render(&self, defaults: &HashSet<(String, String)>) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let indent = "    ".repeat(line.depth);
            let default = line.setting && defaults.contains(&(line.parent.clone(), line.text.clone()));
            let mark = if default { " // default" } else { "" };
            let _ = writeln!(out, "{indent}{}{mark}", line.text);
        }
        out
    }
}

/// A KDL string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn boolean(on: bool) -> &'static str {
    if on {
        "#true"
    } else {
        "#false"
    }
}

/// Seconds as the policy writes a duration, in the largest unit that divides it.
fn duration(seconds: u32) -> String {
    let text = match seconds {
        0 => "0s".to_owned(),
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    quote(&text)
}

/// Milliseconds as a duration: whole seconds when exact, else `…ms`.
fn duration_ms(ms: u32) -> String {
    if ms.is_multiple_of(1000) && ms > 0 {
        duration(ms / 1000)
    } else {
        quote(&format!("{ms}ms"))
    }
}

/// Bytes as the policy writes a size, in the largest binary unit that divides it.
fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    match UNITS.iter().find(|(unit, _)| bytes > 0 && bytes.is_multiple_of(*unit)) {
        Some((unit, name)) => quote(&format!("{}{name}", bytes / unit)),
        None => bytes.to_string(),
    }
}

fn reply(reply: &Reply) -> String {
    let Reply { code, status, text } = reply;
    quote(&format!("{code} {status} {text}"))
}

/// A table by reference: its name, entry count and sources (the entries are not printed).
fn table(p: &mut Printer, policy: &Policy, node: &str, id: Option<TableId>) {
    let Some(id) = id else {
        p.comment(format!("{node}: none"));
        return;
    };
    match usize::try_from(id).ok().and_then(|i| policy.tables.get(i)) {
        Some(info) => p.comment(format!(
            "{node}: table {} ({} entries, from {}); lists are not printed in full",
            info.name,
            info.entries,
            info.sources.join(", ")
        )),
        None => p.comment(format!("{node}: table #{id} (missing from the ruleset)")),
    }
}

/// What `--settings` prints.
pub struct Request<'a> {
    /// Only this farm (and the top-level settings).
    pub farm: Option<&'a str>,
}

/// The settings of `policy` as KDL, defaults marked. `Err` names an unknown farm.
pub fn print(policy: &Policy, request: &Request<'_>) -> Result<String, String> {
    if let Some(name) = request.farm {
        if !policy.farms.iter().any(|f| f.name == name) {
            return Err(unknown_farm(policy, name));
        }
    }
    let mut p = Printer::default();
    top(&mut p, policy);
    let mut defaults = top_defaults(policy);
    for farm in policy.farms.iter().filter(|f| request.farm.is_none_or(|name| f.name == name)) {
        p.leaf(String::new());
        p.lines.last_mut().into_iter().for_each(|l| l.setting = false);
        farm::farm(&mut p, policy, farm);
        defaults.extend(farm_defaults(policy, farm.kind));
    }
    Ok(p.render(&defaults))
}

/// "no farm `x`", with the closest name.
pub fn unknown_farm(policy: &Policy, name: &str) -> String {
    let names: Vec<&str> = policy.farms.iter().map(|f| f.name.as_str()).collect();
    match crate::diag::did_you_mean(name, &names) {
        Some(close) => format!("no farm `{name}` in the ruleset (did you mean `{close}`?)"),
        None => format!("no farm `{name}` in the ruleset (farms: {})", names.join(", ")),
    }
}

fn top(p: &mut Printer, policy: &Policy) {
    let Policy {
        hostname,
        banner,
        spool,
        spool_max_bytes,
        farms: _,
        tables: _,
        dns,
        admin,
        admin_socket,
        state,
        journal,
    } = policy;
    p.leaf(format!("hostname {}", quote(hostname)));
    p.leaf(format!("banner {}", quote(banner)));
    match spool_max_bytes {
        Some(bytes) => p.leaf(format!("spool {} max-bytes={}", quote(spool), size(*bytes))),
        None => p.leaf(format!("spool {}", quote(spool))),
    }
    let DnsSettings { nameservers, timeout_ms, cache_size, probe_interval } = dns;
    let head = format!(
        "dns timeout={} cache-size={cache_size} probe-interval={}",
        duration_ms(*timeout_ms),
        duration(*probe_interval)
    );
    p.block("dns", head, |p| {
        for ns in nameservers {
            p.leaf(format!("nameserver {}", quote(&ns.to_string())));
        }
    });
    let address = admin.map_or_else(|| "#false".to_owned(), |a| quote(&a.to_string()));
    let socket = admin_socket.as_deref().map_or_else(|| "#false".to_owned(), quote);
    p.leaf(format!("admin {address} socket={socket}"));
    match state {
        StateSettings::Embedded { path } => p.leaf(format!("state \"embedded\" path={}", quote(path))),
        StateSettings::Redis { url, timeout_ms, fail_open } => p.leaf(format!(
            "state \"redis\" url={} timeout={} on-failure={}",
            quote(url),
            duration_ms(*timeout_ms),
            on_failure(*fail_open)
        )),
        StateSettings::RedisSentinel { sentinels, service, db, timeout_ms, fail_open } => p.leaf(format!(
            "state \"redis-sentinel\" sentinels={} service={} db={db} timeout={} on-failure={}",
            quote(&sentinels.join(" ")),
            quote(service),
            duration_ms(*timeout_ms),
            on_failure(*fail_open)
        )),
    }
    if let Some(JournalSettings { path, max_size, files, addresses, client_ip }) = journal {
        p.leaf(format!(
            "journal {} max-size={} files={files} addresses={} client-ip={}",
            quote(path),
            size(*max_size),
            quote(addresses.as_str()),
            quote(client_ip.as_str())
        ));
    }
}

fn on_failure(fail_open: bool) -> &'static str {
    if fail_open {
        "\"accept\""
    } else {
        "\"defer\""
    }
}

/// The text of a minimal policy: what the compiler fills in when nothing is written.
fn minimal(hostname: &str, spool: Option<&str>, kind: FarmKind) -> String {
    let spool = spool.map(|s| format!("spool {}\n", quote(s))).unwrap_or_default();
    format!("hostname {}\n{spool}farm \"defaults\" kind={} {{\n}}\n", quote(hostname), quote(kind.as_str()))
}

/// The model the compiler makes of `text`, errors or not: a minimal farm lacks what a real one
/// must have (local domains, auth), and its defaults are what we want from it.
fn model_of(text: &str) -> Option<Policy> {
    let mut lowerer = crate::lower::Lowerer::new();
    let draft = lowerer.lower_text("defaults.kdl", text.to_owned(), None)?;
    crate::emit::emit(&draft, false).ok().map(|emitted| emitted.policy)
}

/// The top-level settings a policy that writes none gets. The admin socket's default follows
/// the spool, so it is compared with a minimal policy that has this spool.
fn top_defaults(policy: &Policy) -> HashSet<(String, String)> {
    let mut defaults = HashSet::new();
    if let Some(minimal) = model_of(&minimal("defaults.invalid", None, FarmKind::InboundMx)) {
        let mut p = Printer::default();
        top(&mut p, &minimal);
        defaults.extend(p.settings().into_iter().filter(|(_, text)| !text.starts_with("admin ")));
    }
    if let Some(minimal) = model_of(&minimal("defaults.invalid", Some(&policy.spool), FarmKind::InboundMx)) {
        let mut p = Printer::default();
        top(&mut p, &minimal);
        defaults.extend(p.settings().into_iter().filter(|(_, text)| text.starts_with("admin ")));
    }
    defaults
}

/// The farm settings a farm of `kind` that writes none gets (with this policy's host name, which
/// some defaults name).
fn farm_defaults(policy: &Policy, kind: FarmKind) -> HashSet<(String, String)> {
    let print = |text: &str| {
        let mut p = Printer::default();
        if let Some(minimal) = model_of(text) {
            for farm in &minimal.farms {
                farm::farm(&mut p, &minimal, farm);
            }
        }
        p.settings()
    };
    let mut defaults: HashSet<(String, String)> = print(&minimal(&policy.hostname, None, kind))
        .into_iter()
        .filter(|(parent, _)| parent.starts_with("farm"))
        .collect();
    // The blocks a farm has only when it writes them: their defaults are those of the bare node.
    let bare = minimal(&policy.hostname, None, kind).replace("{\n}", &format!("{{\n{}}}", BARE_BLOCKS.join("\n")));
    defaults.extend(print(&bare).into_iter().filter(|(parent, text)| {
        BARE_BLOCKS.iter().any(|block| parent == "farm" && text.starts_with(&format!("{block} ")))
    }));
    defaults
}

/// Farm nodes that may be written bare and whose values then are all defaults.
const BARE_BLOCKS: [&str; 3] = ["greylist", "spf", "dmarc"];

#[cfg(test)]
mod tests;
