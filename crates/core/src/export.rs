//! Audit events in the formats SIEM tools read: JSON Lines, syslog (RFC
//! 5424) and CEF. Every format carries the chain hashes, so a receiver can
//! verify the chain it was sent.

use crate::audit::{AuditEvent, Outcome};

/// One event with its place in the chain, as exported.
#[derive(Debug, Clone)]
pub struct ExportedEvent<'a> {
    pub company: Option<&'a str>,
    pub seq: i64,
    pub event: &'a AuditEvent,
    pub prev_hash: &'a [u8],
    pub hash: &'a [u8],
    /// What in the stored event could not be read (it was changed outside
    /// Strongroom); carried in every format so a receiver sees it.
    pub damaged: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Syslog,
    Cef,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "jsonl" => Some(Format::JsonLines),
            "syslog" => Some(Format::Syslog),
            "cef" => Some(Format::Cef),
            _ => None,
        }
    }
}

/// One line (without the line break).
pub fn line(format: Format, e: &ExportedEvent<'_>, hostname: &str) -> String {
    match format {
        Format::JsonLines => json(e).to_string(),
        Format::Syslog => syslog(e, hostname),
        Format::Cef => cef(e),
    }
}

fn json(e: &ExportedEvent<'_>) -> serde_json::Value {
    let ev = e.event;
    let mut v = serde_json::json!({
        "chain": ev.chain,
        "company": e.company,
        "seq": e.seq,
        "at": ev.at,
        "actor": ev.actor,
        "action": ev.action,
        "target": ev.target,
        "outcome": ev.outcome.as_str(),
        "reason": ev.reason,
        // The exact stored text: the chain hash covers these bytes.
        "detail": ev.detail,
        "session": ev.session,
        "client_ip": ev.client_ip,
        "user_agent": ev.user_agent,
        "request_id": ev.request_id,
        "prev_hash": hex::encode(e.prev_hash),
        "hash": hex::encode(e.hash),
    });
    if let Some(d) = e.damaged {
        v["damaged"] = d.into();
    }
    v
}

/// Severity: informational for successes, warning for refusals.
fn severity(o: Outcome) -> (u8, u8) {
    match o {
        Outcome::Success => (6, 3),
        Outcome::Denied | Outcome::Failed => (4, 7),
    }
}

/// RFC 5424 structured-data parameter values escape `"`, `\` and `]`.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// Header fields (HOSTNAME, MSGID) are printable ASCII without spaces.
fn header_token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

fn syslog(e: &ExportedEvent<'_>, hostname: &str) -> String {
    let ev = e.event;
    // Facility 13: log audit.
    let pri = 13 * 8 + u32::from(severity(ev.outcome).0);
    let mut sd = format!(
        "[strongroom@32473 chain=\"{}\" seq=\"{}\" actor=\"{}\" target=\"{}\" outcome=\"{}\"",
        ev.chain,
        e.seq,
        sd_escape(&ev.actor),
        sd_escape(&ev.target),
        ev.outcome.as_str()
    );
    for (k, v) in [
        ("company", e.company.map(str::to_owned)),
        ("reason", ev.reason.clone()),
        ("src", ev.client_ip.clone()),
        ("session", ev.session.clone()),
        ("request", ev.request_id.clone()),
        ("damaged", e.damaged.map(str::to_owned)),
    ] {
        if let Some(v) = v {
            sd.push_str(&format!(" {k}=\"{}\"", sd_escape(&v)));
        }
    }
    sd.push_str(&format!(
        " prev=\"{}\" hash=\"{}\"]",
        hex::encode(e.prev_hash),
        hex::encode(e.hash)
    ));
    format!(
        "<{pri}>1 {} {} strongroom - {} {sd} {} {} {}",
        ev.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        header_token(hostname, 255),
        header_token(&ev.action, 32),
        sd_escape(&ev.actor),
        ev.action,
        sd_escape(&ev.target)
    )
}

/// CEF header fields escape `\` and `|`.
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF extension values escape `\`, `=` and line breaks.
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn cef(e: &ExportedEvent<'_>) -> String {
    let ev = e.event;
    let mut ext = vec![
        format!("rt={}", ev.at.timestamp_millis()),
        format!("suser={}", cef_value(&ev.actor)),
        format!("act={}", cef_value(&ev.action)),
        format!("outcome={}", ev.outcome.as_str()),
        format!("cs1Label=target cs1={}", cef_value(&ev.target)),
        format!("cs2Label=hash cs2={}", hex::encode(e.hash)),
        format!("cs3Label=prevHash cs3={}", hex::encode(e.prev_hash)),
        format!("cn1Label=seq cn1={}", e.seq),
    ];
    if let Some(ip) = &ev.client_ip {
        ext.push(format!("src={}", cef_value(ip)));
    }
    if let Some(c) = e.company {
        ext.push(format!("cs4Label=company cs4={}", cef_value(c)));
    }
    if let Some(r) = &ev.reason {
        ext.push(format!("reason={}", cef_value(r)));
    }
    if let Some(d) = e.damaged {
        ext.push(format!("cs5Label=damaged cs5={}", cef_value(d)));
    }
    format!(
        "CEF:0|Strongroom|Strongroom|{}|{}|{}|{}|{}",
        env!("CARGO_PKG_VERSION"),
        cef_header(&ev.action),
        cef_header(&ev.action),
        severity(ev.outcome).1,
        ext.join(" ")
    )
}

/// Reads back one JSON Lines event (as written by [`line`]): (seq, event,
/// prev hash, hash).
pub fn parse_json_line(s: &str) -> Result<(i64, AuditEvent, Vec<u8>, Vec<u8>), String> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let need = |k: &str| text(k).ok_or_else(|| format!("missing {k}"));
    let hexed =
        |k: &str| need(k).and_then(|h| hex::decode(h).map_err(|_| format!("{k} is not hex")));
    let at = need("at")?
        .parse::<chrono::DateTime<chrono::Utc>>()
        .map_err(|_| "bad time".to_owned())?;
    let outcome = match need("outcome")?.as_str() {
        "success" => Outcome::Success,
        "denied" => Outcome::Denied,
        "failed" => Outcome::Failed,
        o => return Err(format!("bad outcome {o}")),
    };
    let event = AuditEvent {
        chain: v
            .get("chain")
            .and_then(|x| x.as_i64())
            .ok_or("missing chain")?,
        at,
        actor: need("actor")?,
        action: need("action")?,
        target: need("target")?,
        outcome,
        reason: text("reason"),
        detail: need("detail")?,
        session: text("session"),
        client_ip: text("client_ip"),
        user_agent: text("user_agent"),
        request_id: text("request_id"),
    };
    let seq = v.get("seq").and_then(|x| x.as_i64()).ok_or("missing seq")?;
    Ok((seq, event, hexed("prev_hash")?, hexed("hash")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn ev() -> AuditEvent {
        AuditEvent {
            chain: 7,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            actor: "user:a\"b]c".into(),
            action: "record.read".into(),
            target: "customer/x|y=z".into(),
            outcome: Outcome::Denied,
            reason: Some("forbidden".into()),
            detail: "{\"fields\":[\"name\"]}".into(),
            session: None,
            client_ip: Some("192.0.2.1".into()),
            user_agent: None,
            request_id: Some("r1".into()),
        }
    }

    fn exported(e: &AuditEvent) -> ExportedEvent<'_> {
        ExportedEvent {
            company: Some("ACME"),
            seq: 12,
            event: e,
            prev_hash: &[1; 32],
            hash: &[2; 32],
            damaged: None,
        }
    }

    #[test]
    fn syslog_is_rfc5424_with_escaped_structured_data() {
        let e = ev();
        let l = line(Format::Syslog, &exported(&e), "node 1");
        assert!(l.starts_with("<108>1 2023-11-14T22:13:20.000000Z node1 strongroom - record.read [strongroom@32473 chain=\"7\" seq=\"12\""), "{l}");
        assert!(l.contains("actor=\"user:a\\\"b\\]c\""), "{l}");
        assert!(l.contains(&format!("hash=\"{}\"", hex::encode([2u8; 32]))));
    }

    #[test]
    fn cef_escapes_its_separators() {
        let e = ev();
        let l = line(Format::Cef, &exported(&e), "h");
        assert!(l.starts_with("CEF:0|Strongroom|Strongroom|"), "{l}");
        assert!(l.contains("|record.read|record.read|7|"), "{l}");
        assert!(l.contains("cs1=customer/x|y\\=z"), "{l}");
        assert!(l.contains("cn1Label=seq cn1=12"));
    }

    #[test]
    fn json_lines_carry_the_hashes() {
        let e = ev();
        let v: serde_json::Value =
            serde_json::from_str(&line(Format::JsonLines, &exported(&e), "h")).unwrap();
        assert_eq!(v["seq"], 12);
        assert_eq!(v["detail"], "{\"fields\":[\"name\"]}");
        let (seq, back, prev, hash) = parse_json_line(&v.to_string()).unwrap();
        assert_eq!(
            (seq, back, prev, hash),
            (12, e.clone(), vec![1; 32], vec![2; 32])
        );
        assert_eq!(v["hash"], hex::encode([2u8; 32]));
        assert!(v.get("damaged").is_none(), "{v}");
    }

    #[test]
    fn every_format_says_when_an_event_was_damaged() {
        let e = ev();
        let damaged = ExportedEvent {
            damaged: Some("its time is not a number"),
            ..exported(&e)
        };
        let json: serde_json::Value =
            serde_json::from_str(&line(Format::JsonLines, &damaged, "h")).unwrap();
        assert_eq!(json["damaged"], "its time is not a number");
        let syslog = line(Format::Syslog, &damaged, "h");
        assert!(
            syslog.contains(" damaged=\"its time is not a number\""),
            "{syslog}"
        );
        let cef = line(Format::Cef, &damaged, "h");
        assert!(
            cef.contains("cs5Label=damaged cs5=its time is not a number"),
            "{cef}"
        );
    }
}
