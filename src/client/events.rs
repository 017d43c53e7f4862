//! `hookwire events show|list|resend`: the event log from the command
//! line, as tables (or `--json`).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use super::{Api, Client, parse, run, table, urlencode};

#[derive(clap::Subcommand)]
pub enum EventsAction {
    /// One event: received, routed, every attempt per subscription, outcomes.
    Show { id: String },
    /// Received events, newest first.
    List {
        #[arg(long)]
        source: Option<String>,
        /// An event type; `*` matches anything (`invoice.*`).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Events routed to this subscription.
        #[arg(long)]
        subscription: Option<String>,
        /// With --subscription: delivered, filtered, retrying, dead_lettered (ever).
        #[arg(long)]
        outcome: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// How many (default 50, at most 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// The previous page's cursor (printed after a full page).
        #[arg(long)]
        after: Option<String>,
    },
    /// Send one event again to one subscription, from the archive, with its
    /// original webhook-id (even one that was delivered). Needs `operate`.
    Resend {
        id: String,
        #[arg(long)]
        subscription: String,
    },
}

pub fn events_action(api: &Api, action: &EventsAction) -> ExitCode {
    match action {
        EventsAction::Show { id } => show(api, id),
        EventsAction::Resend { id, subscription } => resend(api, id, subscription),
        EventsAction::List { source, event_type, subscription, outcome, from, to, limit, after } => {
            let limit = limit.map(|l| l.to_string());
            let filters = [
                ("source", source.as_deref()),
                ("type", event_type.as_deref()),
                ("subscription", subscription.as_deref()),
                ("outcome", outcome.as_deref()),
                ("from", from.as_deref()),
                ("to", to.as_deref()),
                ("limit", limit.as_deref()),
                ("after", after.as_deref()),
            ];
            list(api, &filters)
        }
    }
}

fn list(api: &Api, filters: &[(&str, Option<&str>)]) -> ExitCode {
    run(|| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (key, value) in filters {
            if let Some(value) = value {
                query.append_pair(key, value);
            }
        }
        let body = Client::new(api)?.send(Method::GET, &format!("/api/v1/events?{}", query.finish()), None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let page: Value = parse(&body)?;
        let mut rows = vec![["ID", "AT", "SOURCE", "TYPE", "BYTES", "ROUTED"].map(String::from).to_vec()];
        for event in page["events"].as_array().into_iter().flatten() {
            let routed = event["routed"].as_array().map(|r| r.iter().map(text).collect::<Vec<_>>().join(", "));
            rows.push(vec![
                text(&event["id"]),
                text(&event["at"]),
                text(&event["source"]),
                text(&event["type"]),
                text(&event["bytes"]),
                routed.filter(|r| !r.is_empty()).unwrap_or_else(|| "(unrouted)".to_owned()),
            ]);
        }
        let mut out = table(&rows);
        if let Some(next) = page["next_after"].as_str() {
            out += &format!("more: --after {next}\n");
        }
        Ok(out)
    })
}

fn resend(api: &Api, id: &str, subscription: &str) -> ExitCode {
    run(|| {
        let path = format!("/api/v1/events/{}/resend", urlencode(id));
        let body = serde_json::json!({ "subscription": subscription });
        let answer = Client::new(api)?.send(Method::POST, &path, Some(body))?;
        if api.json {
            return Ok(answer + "\n");
        }
        Ok(format!("resent {id} to {subscription} (queued; `hookwire events show {id}` follows it)\n"))
    })
}

fn show(api: &Api, id: &str) -> ExitCode {
    run(|| {
        let body = Client::new(api)?.send(Method::GET, &format!("/api/v1/events/{}", urlencode(id)), None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let story: Value = parse(&body)?;
        Ok(render(&story))
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The received line, then a row per attempt and per outcome of each
/// subscription.
fn render(story: &Value) -> String {
    let mut out = format!("event {}\n", text(&story["id"]));
    let received = &story["received"];
    if received.is_null() {
        out += "received: not recorded\n";
    } else {
        let routed = received["routed"].as_array().map(|r| r.iter().map(text).collect::<Vec<_>>().join(", "));
        out += &format!(
            "received {} from {} ({}, {} bytes) by {}; routed to {}\n",
            text(&received["at"]),
            text(&received["source"]),
            text(&received["type"]),
            text(&received["bytes"]),
            text(&received["process"]),
            match routed.filter(|r| !r.is_empty()) {
                Some(routed) => routed,
                None => "nothing (unrouted)".to_owned(),
            }
        );
    }
    let mut rows =
        vec![["SUBSCRIPTION", "OUTCOME", "ATTEMPT", "AT", "STATUS", "MS", "ERROR"].map(String::from).to_vec()];
    for (name, sub) in story["subscriptions"].as_object().into_iter().flatten() {
        let attempts = sub["attempts"].as_array().cloned().unwrap_or_default();
        if attempts.is_empty() {
            rows.push(vec![
                name.clone(),
                text(&sub["outcome"]),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for (i, attempt) in attempts.iter().enumerate() {
            let outcome = if i + 1 == attempts.len() { text(&sub["outcome"]) } else { String::new() };
            let ms = attempt["duration_ms"].as_f64().map_or("-".to_owned(), |ms| format!("{ms:.1}"));
            rows.push(vec![
                name.clone(),
                outcome,
                text(&attempt["attempt"]),
                text(&attempt["at"]),
                text(&attempt["status"]),
                ms,
                text(&attempt["error"]),
            ]);
        }
    }
    out + &table(&rows)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render;

    #[test]
    fn renders_the_received_line_and_a_row_per_attempt() {
        let story = json!({
            "id": "evt_1",
            "received": {"at": "2026-11-30T12:00:00Z", "source": "acme", "type": "a.b", "bytes": 12,
                         "process": "h:1", "routed": ["billing"], "unrouted": false},
            "subscriptions": {"billing": {"outcome": "delivered", "history": [], "attempts": [
                {"attempt": 1, "at": "2026-11-30T12:00:00Z", "duration_ms": 3.25, "status": 503, "error": "503"},
                {"attempt": 2, "at": "2026-11-30T12:00:01Z", "duration_ms": 2.0, "status": 200, "error": null},
            ]}},
        });
        let out = render(&story);
        assert!(out.contains("from acme (a.b, 12 bytes) by h:1; routed to billing"), "{out}");
        let last = out.lines().last().unwrap();
        assert!(last.contains("billing") && last.contains("delivered") && last.contains("200"), "{out}");
        assert!(out.contains("3.2") || out.contains("3.3"), "{out}");
    }
}
