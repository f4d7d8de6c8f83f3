//! The farm's TLS certificate, read as `mtac check` runs: it parses, is valid now and for two
//! weeks more (else a warning), and names the host clients connect to. Certificates live outside
//! the policy's tree (/etc/…), so only the file checks of `crate::files` apply (a policy naming
//! /dev/zero must not hang `mtac check`).

use crate::diag::{Diag, Reporter};
use crate::lower::{DraftFarm, Origin};
use mtac_ruleset::model::FarmKind;

/// The largest certificate file read: a PEM chain is a few KiB.
const CERTIFICATE_LIMIT: u64 = 1 << 20;

/// Days before expiry under which `mtac check` warns.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// The farm's certificate: it must parse, be valid now, not expire within two weeks (warning),
/// and name the node's host name — an error on a submission farm, whose clients verify it, a
/// warning on an inbound one, where SMTP clients seldom do.
pub(super) fn certificate(reporter: &mut Reporter, farm: &DraftFarm, path: &str, hostname: &str, origin: Origin) {
    // Certificates live outside the policy's tree (/etc/…), so only the file checks of
    // `files` apply: a policy naming /dev/zero must not hang `mtac check`.
    let bytes = match crate::files::read_regular(std::path::Path::new(path), CERTIFICATE_LIMIT) {
        Ok(text) => text.into_bytes(),
        Err(crate::files::Refusal::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return, // reported above
        Err(_) => {
            reporter.report(
                Diag::error(
                    "mtac::tls::certificate",
                    format!("TLS certificate {path}: not a PEM file of at most 1 MiB"),
                )
                .help("the file holds the PEM chain, the server's certificate first"),
                origin,
                "unreadable certificate",
            );
            return;
        }
    };
    let problem = |message: String| Diag::error("mtac::tls::certificate", message);
    let pem = match x509_parser::pem::Pem::iter_from_buffer(&bytes).next() {
        Some(Ok(pem)) => pem,
        _ => {
            reporter.report(
                problem(format!("TLS certificate {path}: no PEM certificate in it"))
                    .help("the file holds the PEM chain, the server's certificate first"),
                origin,
                "unreadable certificate",
            );
            return;
        }
    };
    let cert = match pem.parse_x509() {
        Ok(cert) => cert,
        Err(e) => {
            reporter.report(problem(format!("TLS certificate {path}: {e}")), origin, "unreadable certificate");
            return;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_after < now {
        reporter.report(
            problem(format!("TLS certificate {path} expired on {}", validity.not_after))
                .help("renew it; clients that verify certificates refuse an expired one"),
            origin,
            "expired certificate",
        );
    } else if not_before > now {
        reporter.report(
            problem(format!("TLS certificate {path} is not valid before {}", validity.not_before)),
            origin,
            "certificate not yet valid",
        );
    } else if not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        reporter.report(
            Diag::warning(
                "mtac::tls::expiring",
                format!(
                    "TLS certificate {path} expires on {} (in {} days)",
                    validity.not_after,
                    (not_after - now) / 86_400
                ),
            )
            .help("renew it; a node reloads renewed certificate files by itself"),
            origin,
            "expires soon",
        );
    }
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        // Only without subjectAltName do clients fall back to the common name (RFC 6125 6.4.4).
        names =
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect();
    }
    let host = hostname.to_ascii_lowercase();
    let matches = |name: &str| match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
        None => name == host,
    };
    if !names.iter().any(|n| matches(n)) {
        let message = format!("TLS certificate {path} does not name {hostname} (it names: {})", names.join(", "));
        let help = "the certificate must name the host clients connect to: the policy's `hostname`, or the \
                    farm's `tls name=\"…\"` when clients use another name for it";
        let diag = if farm.kind == FarmKind::Submission {
            Diag::error("mtac::tls::name", message)
        } else {
            Diag::warning("mtac::tls::name", message)
        };
        reporter.report(diag.help(help), origin, "certificate for another name");
    }
}
