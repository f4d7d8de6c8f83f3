//! Syntax of the names the policy and the SMTP session exchange: host names, domains, address
//! literals and mailbox addresses. Shared by the compiler (to validate what the operator wrote) and
//! the evaluator (to judge what a client sent), so both agree byte for byte.

use std::net::IpAddr;

/// RFC 1035/1123 host name: labels of letters, digits and inner hyphens, 1–63 bytes each, 253 bytes
/// in all, an optional trailing dot. Underscores are refused (they are valid in DNS, not in host
/// names). Non-ASCII (IDN U-labels) is accepted when every label is otherwise sound, since SMTPUTF8
/// senders may use them.
pub fn is_hostname(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    name.split('.').all(|label| {
        let bytes = label.as_bytes();
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
    })
}

/// A fully qualified domain name: a valid host name with at least two labels and a top-level label
/// that is not all digits (so `1.2.3.4` is not mistaken for a name).
pub fn is_fqdn(name: &str) -> bool {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !is_hostname(trimmed) {
        return false;
    }
    match trimmed.rsplit_once('.') {
        Some((_, tld)) => !tld.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// An address literal as HELO or a domain may carry it: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
pub fn parse_address_literal(text: &str) -> Option<IpAddr> {
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    if let Some(v6) = inner.strip_prefix("IPv6:").or_else(|| inner.strip_prefix("ipv6:")) {
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Split a mailbox `local@domain` at its last `@`. Returns `None` for a string without a domain.
pub fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, domain))
}

/// A mailbox the policy may list: a non-empty local part of at most 64 bytes without spaces or
/// control characters, and a host-name domain.
pub fn is_mailbox(address: &str) -> bool {
    match split_address(address) {
        Some((local, domain)) => {
            local.len() <= 64
                && !local.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
                && is_hostname(domain)
        }
        None => false,
    }
}

/// Lowercase a domain and strip a trailing dot: the form used in every table.
pub fn normalize_domain(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(is_hostname("mx1.example.com"));
        assert!(is_hostname("localhost"));
        assert!(is_hostname("example.com."));
        assert!(!is_hostname("-bad.example.com"));
        assert!(!is_hostname("bad_.example.com"));
        assert!(!is_hostname("a..b"));
        assert!(!is_hostname(""));
        assert!(!is_hostname(&"a".repeat(64)));
    }

    #[test]
    fn fqdns() {
        assert!(is_fqdn("mail.example.org"));
        assert!(!is_fqdn("localhost"));
        assert!(!is_fqdn("192.0.2.1"));
        assert!(!is_fqdn("[192.0.2.1]"));
    }

    #[test]
    fn literals() {
        assert_eq!(parse_address_literal("[192.0.2.1]"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(parse_address_literal("[IPv6:2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_address_literal("192.0.2.1"), None);
        assert_eq!(parse_address_literal("[999.0.2.1]"), None);
    }

    #[test]
    fn mailboxes() {
        assert!(is_mailbox("john.doe@example.com"));
        assert!(!is_mailbox("john doe@example.com"));
        assert!(!is_mailbox("@example.com"));
        assert!(!is_mailbox("john@"));
        assert!(!is_mailbox(&format!("{}@example.com", "x".repeat(65))));
    }
}

/// Where a milter listens, as Postfix's `smtpd_milters` and Sendmail write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterSocket {
    /// `inet:HOST:PORT`, `inet:[V6]:PORT` or `inet:PORT@HOST` (`inet6:` alike).
    Inet { host: String, port: u16 },
    /// `unix:/PATH` or `local:/PATH`.
    Unix(String),
}

/// A milter's address, or `None` when it is not one. The one parser the compiler (which
/// refuses a bad one) and the node (which connects) share.
pub fn milter_socket(address: &str) -> Option<MilterSocket> {
    if let Some(path) = address.strip_prefix("unix:").or_else(|| address.strip_prefix("local:")) {
        return path.starts_with('/').then(|| MilterSocket::Unix(path.to_owned()));
    }
    let inet = address.strip_prefix("inet:").or_else(|| address.strip_prefix("inet6:"))?;
    let (host, port) = match inet.split_once('@') {
        Some((port, host)) => (host, port),
        None => inet.rsplit_once(':')?,
    };
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
    host_ok.then(|| MilterSocket::Inet { host: host.to_owned(), port })
}

#[cfg(test)]
mod milter_socket_tests {
    use super::{milter_socket, MilterSocket};

    #[test]
    fn postfix_and_sendmail_spellings() {
        let inet = |h: &str, p| Some(MilterSocket::Inet { host: h.into(), port: p });
        assert_eq!(milter_socket("inet:127.0.0.1:8891"), inet("127.0.0.1", 8891));
        assert_eq!(milter_socket("inet:8891@localhost"), inet("localhost", 8891));
        assert_eq!(milter_socket("inet6:[::1]:8891"), inet("::1", 8891));
        assert_eq!(milter_socket("unix:/run/opendkim.sock"), Some(MilterSocket::Unix("/run/opendkim.sock".into())));
        for bad in ["127.0.0.1:8891", "inet:host", "inet:h:0", "unix:relative", "inet::25", "inet:a b:25"] {
            assert_eq!(milter_socket(bad), None, "{bad}");
        }
    }
}
