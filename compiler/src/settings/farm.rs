//! One farm's settings, node by node in the order of docs/policy.md section 2.

use super::{boolean, duration, duration_ms, quote, reply, size, table, Printer};
use mtac_ruleset::model::{
    AccessAction, Auth, AuthBackend, BackendProtocol, BackendTls, BanResponse, BanScope, BarePolicy, Check, Directory,
    DkimSign, DmarcSettings, Dnsbl, DnsblTarget, Farm, Greylist, GreylistKey, Limits, MimeRules, OnFail, OnQuarantine,
    OnTempError, Policy, Program, RateSubject, RecipientDomainPolicy, Relay, ScannerKind, Screen, SenderAuth,
    SniCertificate, SpfSettings, Stage, Step, Stress, TalkerAction, Timeouts, Tls, VerdictHeaders,
};

pub(super) fn farm(p: &mut Printer, policy: &Policy, farm: &Farm) {
    let Farm {
        name,
        kind,
        listeners,
        limits,
        trust_loopback,
        local_domains,
        local_addresses,
        role_accounts,
        access,
        access_actions,
        relay_clients,
        program,
        dnsbl,
        bans,
        greylist,
        scanners,
        scan_max_size,
        scan_oversize_refuse,
        verdict_headers,
        mime,
        filters,
        relay,
        tls,
        auth,
        dkim_sign,
        directory,
        bare_line_ends,
        ban_response,
        rate_limits,
        tarpit_ms,
        screen,
        sender_auth,
        recipient_domains,
    } = farm;
    let head = format!("farm {} kind={}", quote(name), quote(kind.as_str()));
    p.block("farm", head, |p| {
        for l in listeners {
            let mut line = format!("listen {}", quote(&l.address.to_string()));
            if l.implicit_tls {
                line.push_str(" tls=\"implicit\"");
            }
            if !l.proxy_from.is_empty() {
                let nets: Vec<String> = l.proxy_from.iter().map(ToString::to_string).collect();
                line.push_str(&format!(" proxy-from={}", quote(&nets.join(" "))));
            }
            p.leaf(line);
        }
        print_limits(p, limits);
        p.leaf(format!("trust-loopback {}", boolean(*trust_loopback)));
        table(p, policy, "local-domains", *local_domains);
        table(p, policy, "local-addresses", *local_addresses);
        if role_accounts.is_empty() {
            p.comment("role-accounts: none");
        } else {
            let names: Vec<String> = role_accounts.iter().map(|r| quote(r)).collect();
            p.leaf(format!("role-accounts {}", names.join(" ")));
        }
        table(p, policy, "relay-clients", *relay_clients);
        let access_stage = stage_of(program, |c| matches!(c, Check::Access)).unwrap_or(Stage::Rcpt);
        table(p, policy, &format!("access stage=\"{}\"", access_stage.as_str()), *access);
        for (index, action) in access_actions.iter().enumerate() {
            let text = match action {
                AccessAction::Accept => "accept".to_owned(),
                AccessAction::Reject(r) => format!("reject reply={}", reply(r)),
                AccessAction::Defer(r) => format!("defer reply={}", reply(r)),
            };
            p.comment(format!("  access action {index}: {text}"));
        }
        checks(p, policy, program);
        if let Some(dnsbl) = dnsbl {
            print_dnsbl(p, dnsbl, program);
        }
        for ban in bans {
            let scope = match ban.scope {
                BanScope::Farm => "farm",
                BanScope::AllFarms => "all-farms",
            };
            let response = match ban_response {
                BanResponse::Close521 => "521",
                BanResponse::RefuseRecipients => "refuse-recipients",
            };
            p.leaf(format!(
                "ban after={} duration={} network=\"/{}\" network6=\"/{}\" scope=\"{scope}\" response=\"{response}\"",
                quote(&ban.after.join(" ")),
                duration(ban.seconds),
                ban.v4_prefix,
                ban.v6_prefix
            ));
        }
        let shadowed: Vec<String> =
            Stage::ALL.iter().flat_map(|s| program.stage(*s)).filter(|s| s.shadow).map(|s| quote(&s.rule)).collect();
        if !shadowed.is_empty() {
            p.leaf(format!("shadow {}", shadowed.join(" ")));
        }
        for r in rate_limits {
            let subject = match r.subject {
                RateSubject::Connections => "connections",
                RateSubject::Messages => "messages",
            };
            p.leaf(format!(
                "rate-limit {subject}={} per={} network=\"/{}\" network6=\"/{}\" reply={}",
                r.limit,
                duration(r.window),
                r.v4_prefix,
                r.v6_prefix,
                reply(&r.reply)
            ));
        }
        p.leaf(format!("tarpit {}", duration_ms(*tarpit_ms)));
        print_screen(p, screen);
        if let Some(g) = greylist {
            print_greylist(p, policy, g);
        }
        for RecipientDomainPolicy { domains, skip, dnsbl_threshold } in &recipient_domains.policies {
            let names: Vec<String> = domains.iter().map(|d| quote(d)).collect();
            p.block("recipient-domain", format!("recipient-domain {}", names.join(" ")), |p| {
                if !skip.is_empty() {
                    let rules: Vec<String> = skip.iter().map(|r| quote(r)).collect();
                    p.leaf(format!("skip {}", rules.join(" ")));
                }
                if let Some(threshold) = dnsbl_threshold {
                    p.leaf(format!("dnsbl threshold={threshold}"));
                }
            });
        }
        print_sender_auth(p, policy, sender_auth);
        print_scan(p, scanners, *scan_max_size, *scan_oversize_refuse);
        print_verdict_headers(p, verdict_headers);
        if let Some(mime) = mime {
            print_mime(p, mime);
        }
        print_filters(p, filters);
        print_relay(p, relay);
        if let Some(Tls { certificate, key, required, name, sni }) = tls {
            let mut head =
                format!("tls certificate={} key={} required={}", quote(certificate), quote(key), boolean(*required));
            if let Some(name) = name {
                head.push_str(&format!(" name={}", quote(name)));
            }
            p.block("tls", head, |p| {
                for SniCertificate { name, certificate, key } in sni {
                    p.leaf(format!("sni {} certificate={} key={}", quote(name), quote(certificate), quote(key)));
                }
            });
        }
        if let Some(auth) = auth {
            print_auth(p, auth);
        }
        if let Some(dkim_sign) = dkim_sign {
            print_dkim_sign(p, dkim_sign);
        }
        if let Some(directory) = directory {
            print_directory(p, directory);
        }
        let bare = match bare_line_ends {
            BarePolicy::Reject => "reject",
            BarePolicy::Normalize => "normalize",
        };
        p.leaf(format!("bare-line-ends \"{bare}\""));
        p.comment("the decision program this compiles to (rule order per stage):");
        let Program { connect, helo, mail, rcpt, data } = program;
        for (stage, steps) in [("connect", connect), ("helo", helo), ("mail", mail), ("rcpt", rcpt), ("data", data)] {
            let rules: Vec<&str> = steps.iter().map(|s: &Step| s.rule.as_str()).collect();
            if !rules.is_empty() {
                p.comment(format!("  at {stage}: {}", rules.join(", ")));
            }
        }
    });
}

fn print_limits(p: &mut Printer, limits: &Limits) {
    let Limits {
        connections,
        connections_per_ip,
        transfers_per_ip,
        message_size,
        recipients,
        line_length,
        errors,
        soft_errors,
        timeouts,
    } = limits;
    let Timeouts { command, data, relay, pregreet } = timeouts;
    p.block("limits", "limits", |p| {
        p.leaf(format!("connections {connections}"));
        p.leaf(format!("connections-per-ip {connections_per_ip}"));
        p.leaf(format!("transfers-per-ip {transfers_per_ip}"));
        p.leaf(format!("message-size {}", size(*message_size)));
        p.leaf(format!("recipients {recipients}"));
        p.leaf(format!("line-length {line_length}"));
        p.leaf(format!("errors {errors}"));
        p.leaf(format!("soft-errors {soft_errors}"));
        p.leaf(format!(
            "timeout command={} data={} relay={} pregreet={}",
            duration(*command),
            duration(*data),
            duration(*relay),
            duration(*pregreet)
        ));
    });
}

/// The stage of the first step whose check `is`, if the program has one.
fn stage_of(program: &Program, is: impl Fn(&Check) -> bool) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| program.stage(*s).iter().any(|step| is(&step.check)))
}

/// `helo`, `sender`, `recipient` and `client`: the program's steps are what they compiled to.
fn checks(p: &mut Printer, policy: &Policy, program: &Program) {
    let has = |is: fn(&Check) -> bool| stage_of(program, is).is_some();
    let helo_stage = stage_of(program, |c| {
        matches!(c, Check::HeloSyntax | Check::HeloFqdn | Check::HeloNotOurs { .. } | Check::HeloResolvable)
    })
    .unwrap_or(Stage::Rcpt);
    p.leaf(format!(
        "helo required={} syntax={} fqdn={} not-ours={} resolvable={} stage=\"{}\"",
        boolean(has(|c| matches!(c, Check::HeloRequired))),
        boolean(has(|c| matches!(c, Check::HeloSyntax))),
        boolean(has(|c| matches!(c, Check::HeloFqdn))),
        boolean(has(|c| matches!(c, Check::HeloNotOurs { .. }))),
        boolean(has(|c| matches!(c, Check::HeloResolvable))),
        helo_stage.as_str()
    ));
    let sender_stage =
        stage_of(program, |c| matches!(c, Check::SenderFqdn | Check::SenderDeny { .. } | Check::SenderResolvable))
            .unwrap_or(Stage::Rcpt);
    let head = format!(
        "sender fqdn={} resolvable={} stage=\"{}\"",
        boolean(has(|c| matches!(c, Check::SenderFqdn))),
        boolean(has(|c| matches!(c, Check::SenderResolvable))),
        sender_stage.as_str()
    );
    let deny = Stage::ALL.iter().flat_map(|s| program.stage(*s)).find_map(|step| match &step.check {
        Check::SenderDeny { domains, addresses } => Some((*domains, *addresses)),
        _ => None,
    });
    p.block("sender", head, |p| {
        if let Some((domains, addresses)) = deny {
            table(p, policy, "deny (domains)", domains);
            table(p, policy, "deny (addresses)", addresses);
        }
    });
    p.leaf(format!("recipient fqdn={}", boolean(has(|c| matches!(c, Check::RecipientFqdn)))));
    for stage in Stage::ALL {
        for step in program.stage(stage) {
            if let Check::ClientReverseDns { confirmed } = step.check {
                let what = if confirmed { "forward-confirmed" } else { "required" };
                p.leaf(format!("client reverse-dns=\"{what}\" stage=\"{}\"", stage.as_str()));
            }
        }
    }
}

fn print_dnsbl(p: &mut Printer, dnsbl: &Dnsbl, program: &Program) {
    let Dnsbl { threshold, allow_threshold, zones } = dnsbl;
    let stage = stage_of(program, |c| matches!(c, Check::Dnsbl)).unwrap_or(Stage::Rcpt);
    let step = program.stage(stage).iter().find(|s| matches!(s.check, Check::Dnsbl));
    let mut head = format!("dnsbl threshold={threshold}");
    if let Some(allow) = allow_threshold {
        head.push_str(&format!(" allow-threshold={allow}"));
    }
    head.push_str(&format!(" stage=\"{}\"", stage.as_str()));
    if let Some(step) = step {
        head.push_str(&format!(" reply={}", reply(&step.reply)));
    }
    p.block("dnsbl", head, |p| {
        for zone in zones {
            let target = match zone.target {
                DnsblTarget::ClientIp => "client",
                DnsblTarget::HeloName => "helo",
                DnsblTarget::SenderDomain => "sender-domain",
            };
            let mut head = format!("zone {} target=\"{target}\"", quote(&zone.zone));
            if zone.verified {
                head.push_str(" verified=#true");
            }
            p.block("zone", head, |p| {
                for answer in &zone.answers {
                    let octets: Vec<String> = answer
                        .octets
                        .iter()
                        .map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("[{lo}..{hi}]") })
                        .collect();
                    p.leaf(format!("answer {} weight={}", quote(&octets.join(".")), answer.weight));
                }
            });
        }
    });
}

fn print_screen(p: &mut Printer, screen: &Screen) {
    let Screen { pregreet_remember, pregreet_talker, pipelining, stress } = screen;
    p.block("screen", "screen", |p| {
        let talker = match pregreet_talker {
            TalkerAction::Close => "close",
            TalkerAction::RefuseRecipients => "refuse-recipients",
        };
        p.leaf(format!("pregreet remember={} talker=\"{talker}\"", duration(*pregreet_remember)));
        match pipelining {
            Some(r) => p.leaf(format!("pipelining reply={}", reply(r))),
            None => p.leaf("pipelining #false"),
        }
        match stress {
            Some(Stress { percent, command_timeout, data_timeout, errors }) => p.leaf(format!(
                "stress at=\"{percent}%\" command={} data={} errors={errors}",
                duration(*command_timeout),
                duration(*data_timeout)
            )),
            None => p.leaf("stress #false"),
        }
    });
}

fn print_greylist(p: &mut Printer, policy: &Policy, g: &Greylist) {
    let Greylist {
        key,
        delay,
        retry_window,
        lifetime,
        v4_prefix,
        v6_prefix,
        auto_whitelist,
        whitelist_clients,
        whitelist_senders,
        whitelist_recipients,
        reply: greylist_reply,
    } = g;
    let key = match key {
        GreylistKey::Network => "network",
        GreylistKey::Fcrdns => "fcrdns",
        GreylistKey::Spf => "spf",
    };
    let head = format!(
        "greylist delay={} retry-window={} lifetime={} key=\"{key}\" network=\"/{v4_prefix}\" network6=\"/{v6_prefix}\" auto-whitelist={auto_whitelist} reply={}",
        duration(*delay),
        duration(*retry_window),
        duration(*lifetime),
        reply(greylist_reply)
    );
    p.block("greylist", head, |p| {
        table(p, policy, "whitelist-client", *whitelist_clients);
        table(p, policy, "whitelist-sender-domain", *whitelist_senders);
        table(p, policy, "whitelist-recipient", *whitelist_recipients);
    });
}

fn temperror(on: OnTempError) -> &'static str {
    match on {
        OnTempError::Defer => "\"defer\"",
        OnTempError::Pass => "\"pass\"",
    }
}

fn on_fail(on: OnFail) -> &'static str {
    match on {
        OnFail::Refuse => "\"refuse\"",
        OnFail::Record => "\"record\"",
    }
}

fn print_sender_auth(p: &mut Printer, policy: &Policy, sender_auth: &SenderAuth) {
    let SenderAuth { spf, dkim, dmarc } = sender_auth;
    match spf {
        Some(SpfSettings { fail, temperror: t, helo }) => {
            p.leaf(format!("spf fail={} temperror={} helo={}", on_fail(*fail), temperror(*t), boolean(*helo)))
        }
        None => p.comment("spf: not checked"),
    }
    p.leaf(format!("dkim {}", boolean(*dkim)));
    match dmarc {
        Some(DmarcSettings { reject, quarantine, temperror: t, never_refuse, trust_arc }) => {
            let quarantine = match quarantine {
                OnQuarantine::Header => "header",
                OnQuarantine::Refuse => "refuse",
                OnQuarantine::Defer => "defer",
            };
            let head =
                format!("dmarc reject={} quarantine=\"{quarantine}\" temperror={}", on_fail(*reject), temperror(*t));
            p.block("dmarc", head, |p| {
                table(p, policy, "never-refuse", *never_refuse);
                table(p, policy, "trust-arc", *trust_arc);
            });
        }
        None => p.comment("dmarc: not evaluated"),
    }
}

fn print_scan(p: &mut Printer, scanners: &[mtac_ruleset::model::Scanner], max_size: u64, oversize_refuse: bool) {
    let oversize = if oversize_refuse { "refuse" } else { "pass" };
    let head = format!("scan max-size={} oversize=\"{oversize}\"", size(max_size));
    if scanners.is_empty() {
        p.comment(format!("{head} (no scanner)"));
        return;
    }
    p.block("scan", head, |p| {
        for s in scanners {
            let kind = match s.kind {
                ScannerKind::Clamav => "clamav",
                ScannerKind::Spamassassin => "spamassassin",
                ScannerKind::Rspamd => "rspamd",
            };
            let fail = if s.fail_open { "open" } else { "closed" };
            let mut line = format!("{kind} {} timeout={} fail=\"{fail}\"", quote(&s.address), duration(s.timeout));
            if let Some(tag) = s.tag_score {
                line.push_str(&format!(" tag={tag}"));
            }
            if let Some(reject) = s.reject_score {
                line.push_str(&format!(" reject={reject}"));
            }
            p.leaf(line);
        }
    });
}

fn print_filters(p: &mut Printer, filters: &[mtac_ruleset::model::Filter]) {
    for f in filters {
        let kind = match f.kind {
            mtac_ruleset::model::FilterKind::Milter => "milter",
            mtac_ruleset::model::FilterKind::Hook => "hook",
        };
        let mut line = format!(
            "{kind} {} name={} connect-timeout={} command-timeout={} timeout={} fail=\"{}\"",
            quote(&f.address),
            quote(&f.name),
            duration(f.connect_timeout),
            duration(f.command_timeout),
            duration(f.total_timeout),
            if f.fail_open { "open" } else { "closed" }
        );
        if f.kind == mtac_ruleset::model::FilterKind::Milter {
            let discard = if f.discard_accepts { "accept" } else { "refuse" };
            let quarantine = if f.quarantine_header { "header" } else { "refuse" };
            let recipients = if f.change_recipients { "change" } else { "refuse" };
            line.push_str(&format!(" discard=\"{discard}\" quarantine=\"{quarantine}\" recipients=\"{recipients}\""));
        } else {
            line.push_str(if f.ask_rcpt { " ask-rcpt=#true" } else { " ask-rcpt=#false" });
        }
        p.leaf(line);
    }
}

fn print_verdict_headers(p: &mut Printer, headers: &VerdictHeaders) {
    let VerdictHeaders { names, authserv_ids, rename } = headers;
    let action = if *rename { "rename" } else { "remove" };
    let names: Vec<String> = names.iter().map(|n| quote(n)).collect();
    p.leaf(format!("verdict-headers {} action=\"{action}\"", names.join(" ")));
    if let Some(id) = authserv_ids.first() {
        p.leaf(format!("authserv-id {}", quote(id)));
    }
}

fn print_mime(p: &mut Printer, mime: &MimeRules) {
    let MimeRules { forbid_extensions, forbid_types, require_headers, forged_local_sender } = mime;
    let list = |items: &[String]| items.iter().map(|i| quote(i)).collect::<Vec<_>>().join(" ");
    p.block("mime", "mime", |p| {
        if !forbid_extensions.is_empty() {
            p.leaf(format!("forbid-extension {}", list(forbid_extensions)));
        }
        if !forbid_types.is_empty() {
            p.leaf(format!("forbid-type {}", list(forbid_types)));
        }
        if !require_headers.is_empty() {
            p.leaf(format!("require-header {}", list(require_headers)));
        }
        p.leaf(format!("forged-local-sender {}", boolean(*forged_local_sender)));
    });
}

fn print_relay(p: &mut Printer, relay: &Relay) {
    match relay {
        Relay::Maildir(dir) => p.leaf(format!("deliver maildir={}", quote(dir))),
        Relay::Backends(backends) if backends.is_empty() => p.comment("relay: none"),
        Relay::Backends(backends) => p.block("relay", "relay", |p| {
            for b in backends {
                let scheme = match b.protocol {
                    BackendProtocol::Smtp => "smtp",
                    BackendProtocol::Lmtp => "lmtp",
                };
                let tls = match &b.tls {
                    BackendTls::Off => "tls=\"off\"".to_owned(),
                    BackendTls::Opportunistic => "tls=\"opportunistic\"".to_owned(),
                    BackendTls::Required { ca, name } => {
                        let ca = ca.as_deref().map(|c| format!(" ca={}", quote(c))).unwrap_or_default();
                        format!("tls=\"required\"{ca} name={}", quote(name))
                    }
                };
                p.leaf(format!("backend {} {tls}", quote(&format!("{scheme}://{}", b.address))));
            }
        }),
    }
}

fn print_auth(p: &mut Printer, auth: &Auth) {
    let Auth {
        mechanisms,
        backend,
        max_failures,
        cache_ttl,
        sender_aliases,
        header_from_owned,
        null_sender,
        unknown_user_cost: _,
    } = auth;
    let header_from = if *header_from_owned { "owned" } else { "any" };
    let head = format!(
        "auth mechanisms={} max-failures={max_failures} cache={} null-sender={} header-from=\"{header_from}\"",
        quote(&mechanisms.join(" ")),
        duration(*cache_ttl),
        boolean(*null_sender)
    );
    p.block("auth", head, |p| {
        match backend {
            AuthBackend::Ldap { url, bind_dn_template } => {
                p.leaf(format!("ldap url={} bind-dn={}", quote(url), quote(bind_dn_template)))
            }
            AuthBackend::Table(users) => {
                for (user, hash) in users {
                    p.leaf(format!("user {} hash={}", quote(user), quote(hash)));
                }
            }
        }
        for (user, address) in sender_aliases {
            p.leaf(format!("may-send-as {} {}", quote(user), quote(address)));
        }
    });
}

fn print_dkim_sign(p: &mut Printer, dkim_sign: &DkimSign) {
    let DkimSign { keys, headers } = dkim_sign;
    p.block("dkim-sign", format!("dkim-sign headers={}", quote(&headers.join(" "))), |p| {
        for key in keys {
            p.leaf(format!("key {} selector={} file={}", quote(&key.domain), quote(&key.selector), quote(&key.file)));
        }
    });
}

fn print_directory(p: &mut Printer, directory: &Directory) {
    let Directory {
        url,
        base,
        filter,
        attributes,
        bind_dn,
        bind_password_file,
        timeout_ms,
        pool,
        positive_ttl,
        negative_ttl,
        cache_size,
        lookups,
        exported,
    } = directory;
    let head = format!(
        "directory {} base={} timeout={} pool={pool} lookups={}",
        quote(url),
        quote(base),
        duration_ms(*timeout_ms),
        boolean(*lookups)
    );
    p.block("directory", head, |p| {
        let attributes: Vec<String> = attributes.iter().map(|a| quote(a)).collect();
        p.leaf(format!("attributes {}", attributes.join(" ")));
        p.leaf(format!("filter {}", quote(filter)));
        if let (Some(dn), Some(file)) = (bind_dn, bind_password_file) {
            p.leaf(format!("bind {} password-file={}", quote(dn), quote(file)));
        }
        p.leaf(format!(
            "cache positive={} negative={} size={cache_size}",
            duration(*positive_ttl),
            duration(*negative_ttl)
        ));
        p.comment(format!("exported by `mtac build --export-directory`: {exported} addresses"));
    });
}
