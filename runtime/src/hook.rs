//! HTTP/JSON hooks: in-house filters in any language, asked at the end of the message (and, with
//! `ask-rcpt=#true`, about each recipient the policy accepted) in the shape of the MTA Hooks
//! draft (stage, client, envelope, headers). One POST per message over
//! hyper (HTTP/1.1, no TLS: hooks run beside the node), with the filter's connect, command and
//! total timeouts; the answer is the JSON object
//! `{"action": "accept"|"continue"|"reject"|"tempfail"|"discard", "reply": "550 5.7.1 TEXT",
//! "add-headers": [{"name": N, "value": V}]}` and becomes a [`crate::milter::client::Answer`],
//! so one function (`milter::judge`) decides what every filter's answer means.
//!
//! The request carries the header section, read from the spool field by field (at most
//! [`MAX_HEADERS`] bytes), never the body.

use crate::milter::client::{Answer, Edit, Envelope, MilterError, Verdict};
use crate::milter::Fields;
use crate::spool::SpoolReader;
use mtac_ruleset::model::Filter;
use std::time::Duration;

/// The most header bytes sent to a hook.
pub const MAX_HEADERS: usize = 256 * 1024;
/// The most a hook's answer may be.
const MAX_ANSWER: usize = 64 * 1024;

/// Ask one hook about the spooled message.
pub async fn ask(filter: &Filter, envelope: &Envelope<'_>, spool: &SpoolReader) -> Result<Answer, MilterError> {
    let total = Duration::from_secs(u64::from(filter.total_timeout));
    let work = async {
        let mut body = request("end-of-message", envelope);
        if let Some(object) = body.as_object_mut() {
            object.insert("headers".into(), serde_json::json!(headers(spool)?));
        }
        post(filter, body).await
    };
    tokio::time::timeout(total, work).await.unwrap_or(Err(MilterError::Timeout("total")))
}

fn protocol(what: String) -> MilterError {
    MilterError::Protocol { stage: "end-of-message", what }
}

/// Ask a hook with `ask-rcpt=#true` about a recipient the policy accepted (`stage: "rcpt"`,
/// `envelope.rcpt`; `envelope.to` the recipients accepted before it). Its answer is accept,
/// continue, reject or tempfail; anything else there is a broken hook (`fail=` decides).
pub async fn ask_rcpt(filter: &Filter, envelope: &Envelope<'_>, rcpt: &str) -> Result<Verdict, MilterError> {
    let total = Duration::from_secs(u64::from(filter.total_timeout));
    let mut body = request("rcpt", envelope);
    if let Some(fields) = body.get_mut("envelope").and_then(serde_json::Value::as_object_mut) {
        fields.insert("rcpt".into(), rcpt.into());
    }
    let answer = tokio::time::timeout(total, post(filter, body)).await.unwrap_or(Err(MilterError::Timeout("total")))?;
    match answer.verdict {
        Verdict::Discard { .. } => Err(protocol("a discard at RCPT".into())),
        _ if !answer.edits.is_empty() => Err(protocol("headers added at RCPT".into())),
        verdict => Ok(verdict),
    }
}

/// The request's JSON without the message: stage, client, server and envelope.
fn request(stage: &str, envelope: &Envelope<'_>) -> serde_json::Value {
    serde_json::json!({
        "stage": stage,
        "queue-id": envelope.queue_id,
        "client": {
            "ip": envelope.client.ip().to_string(),
            "port": envelope.client.port(),
            "name": envelope.client_name,
            "helo": envelope.helo,
            "tls": envelope.tls.is_some(),
            "user": envelope.user,
        },
        "server": { "hostname": envelope.hostname },
        "envelope": { "from": envelope.sender, "to": envelope.recipients },
    })
}

async fn post(filter: &Filter, body: serde_json::Value) -> Result<Answer, MilterError> {
    use http_body_util::BodyExt;
    let rest = filter.address.strip_prefix("http://").ok_or_else(|| MilterError::Address(filter.address.clone()))?;
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, "/".to_owned()),
    };
    let body = serde_json::to_vec(&body).map_err(|e| protocol(e.to_string()))?;
    let connect = Duration::from_secs(u64::from(filter.connect_timeout));
    let command = Duration::from_secs(u64::from(filter.command_timeout));
    let stream = match tokio::time::timeout(connect, tokio::net::TcpStream::connect(authority)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(MilterError::Connect(e)),
        Err(_) => return Err(MilterError::ConnectTimeout(connect)),
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| protocol(format!("HTTP: {e}")))?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| protocol(format!("request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| protocol(format!("HTTP: {e}")));
        let result = match response {
            Ok(response) => {
                let status = response.status();
                let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| protocol(format!("body: {e}")))?
                    .to_bytes();
                if status.is_success() {
                    parse(&bytes)
                } else {
                    Err(protocol(format!("answered HTTP {status}")))
                }
            }
            Err(e) => Err(e),
        };
        driver.abort();
        result
    };
    tokio::time::timeout(command, exchange).await.unwrap_or(Err(MilterError::Timeout("end-of-message")))
}

/// The header section as `[name, value]` pairs (values unfolded as written, CRs removed).
fn headers(spool: &SpoolReader) -> Result<Vec<[String; 2]>, MilterError> {
    let mut fields = Fields::new(crate::milter::client::MAX_FIELD);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    let mut size = 0usize;
    loop {
        let n = spool.read_at(fields.fed(), &mut buf).map_err(|error| MilterError::Io { stage: "header", error })?;
        match buf.get(..n) {
            Some(chunk) if n > 0 => fields.feed(chunk),
            _ => fields.finish(),
        }
        while let Some((name, value)) = fields.next_field() {
            size += name.len() + value.len();
            if size > MAX_HEADERS {
                return Ok(out);
            }
            let value = value.strip_prefix(b" ").unwrap_or(&value);
            out.push([String::from_utf8_lossy(&name).into_owned(), String::from_utf8_lossy(value).into_owned()]);
        }
        if fields.body_start().is_some() {
            return Ok(out);
        }
    }
}

/// A hook's JSON answer as the answer of a milter at the end of the message.
pub fn parse(body: &[u8]) -> Result<Answer, MilterError> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| protocol(format!("JSON: {e}")))?;
    let reply = json.get("reply").and_then(serde_json::Value::as_str).map(str::to_owned);
    let stage = "end-of-message";
    let verdict = match json.get("action").and_then(serde_json::Value::as_str) {
        Some("accept" | "continue" | "modify") => Verdict::Pass,
        Some("reject") => Verdict::Reject { stage, reply },
        Some("tempfail") => Verdict::Tempfail { stage, reply },
        Some("discard") => Verdict::Discard { stage },
        other => return Err(protocol(format!("action {other:?}"))),
    };
    let mut edits = Vec::new();
    let added = json.get("add-headers").and_then(serde_json::Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if added.len() > crate::milter::client::MAX_EDITS {
        return Err(protocol("too many headers".into()));
    }
    for field in added {
        let text = |key: &str| field.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
        match (text("name"), text("value")) {
            (Some(name), Some(value)) => edits.push(Edit::AddHeader { name, value }),
            _ => return Err(protocol("an add-headers entry without name and value".into())),
        }
    }
    Ok(Answer { verdict, edits })
}
