//! The Received header mtac prepends to every message (RFC 5321 4.4), and the RFC 5322 date.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Inputs of the trace header.
pub struct Trace<'a> {
    pub helo: Option<&'a str>,
    pub client: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub smtputf8: bool,
    pub id: &'a str,
    /// Named only when there is exactly one, so a list of recipients never leaks.
    pub recipient: Option<&'a str>,
    /// The TLS version and cipher suite, when the session is encrypted.
    pub tls: Option<&'a str>,
    /// The session authenticated (SMTP AUTH).
    pub authenticated: bool,
}

/// `Received: from helo ([ip]) by host (mtac) with ESMTP id ID for <rcpt>; date` with CRLF.
pub fn header(trace: &Trace<'_>) -> String {
    use std::fmt::Write as _;
    // RFC 3848 and RFC 6531: ESMTP + S (TLS) + A (authenticated); UTF8SMTP likewise.
    let base = match (trace.esmtp, trace.smtputf8) {
        (true, true) => "UTF8SMTP",
        (true, false) => "ESMTP",
        (false, _) => "SMTP",
    };
    let suffix = match (trace.esmtp, trace.tls.is_some(), trace.authenticated) {
        (false, _, _) => "",
        (true, true, true) => "SA",
        (true, true, false) => "S",
        (true, false, true) => "A",
        (true, false, false) => "",
    };
    // One buffer for the whole field (one per relayed message): writes into a String cannot
    // fail, so their results are dropped.
    let mut out = String::with_capacity(256);
    out.push_str("Received: from ");
    // The HELO name is client text: keep only what a host name or literal may contain.
    out.extend(
        trace
            .helo
            .unwrap_or("unknown")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
            .take(255),
    );
    let _ = match trace.client {
        IpAddr::V4(v4) => write!(out, " ([{v4}])"),
        IpAddr::V6(v6) => write!(out, " ([IPv6:{v6}])"),
    };
    let _ = write!(out, "\r\n\tby {} (mtac)", trace.hostname);
    if let Some(tls) = trace.tls {
        out.push_str("\r\n\t(using ");
        out.extend(tls.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ' ')));
        out.push(')');
    }
    let _ = write!(out, "\r\n\twith {base}{suffix} id {}", trace.id);
    if let Some(rcpt) = trace.recipient {
        out.push_str("\r\n\tfor <");
        out.extend(rcpt.chars().filter(|c| !c.is_control() && *c != '<' && *c != '>'));
        out.push('>');
    }
    out.push_str(";\r\n\t");
    write_rfc5322_date(&mut out, SystemTime::now());
    out.push_str("\r\n");
    out
}

/// Appends `Sun, 22 Nov 2026 13:45:00 +0000` to `out`.
fn write_rfc5322_date(out: &mut String, time: SystemTime) {
    use std::fmt::Write as _;
    let secs = time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let weekday = WEEKDAYS.get((days % 7) as usize).copied().unwrap_or("Thu");
    let month_name = MONTHS.get(month.saturating_sub(1) as usize).copied().unwrap_or("Jan");
    let _ = write!(
        out,
        "{weekday}, {day:02} {month_name} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), Howard Hinnant's algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rfc5322_date(time: SystemTime) -> String {
        let mut out = String::new();
        write_rfc5322_date(&mut out, time);
        out
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_355_100);
        assert_eq!(rfc5322_date(t), "Sun, 22 Nov 2026 13:45:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn header_is_safe_and_names_one_recipient() {
        let h = header(&Trace {
            helo: Some("evil\r\nX-Injected: yes"),
            client: "192.0.2.1".parse().unwrap(),
            hostname: "mx.example.net",
            esmtp: true,
            smtputf8: false,
            id: "ABC",
            recipient: Some("john@example.com"),
            tls: None,
            authenticated: false,
        });
        assert!(h.starts_with(
            "Received: from evilX-Injected:yes ([192.0.2.1])\r\n\tby mx.example.net (mtac)\r\n\twith ESMTP id ABC"
        ));
        assert!(h.contains("for <john@example.com>;"));
        assert!(h.ends_with("+0000\r\n"));
        assert_eq!(h.matches("\r\n").count(), h.matches('\n').count());
    }

    #[test]
    fn tls_and_auth_are_recorded_as_rfc_3848_says() {
        let h = header(&Trace {
            helo: Some("laptop.example.org"),
            client: "192.0.2.1".parse().unwrap(),
            hostname: "smtp.example.net",
            esmtp: true,
            smtputf8: false,
            id: "ABC",
            recipient: None,
            tls: Some("TLS1.3 TLS13_AES_256_GCM_SHA384"),
            authenticated: true,
        });
        assert!(h.contains("(using TLS1.3 TLS13_AES_256_GCM_SHA384)\r\n\twith ESMTPSA id ABC"), "{h}");
    }
}
