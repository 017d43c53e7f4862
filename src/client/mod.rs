//! The operator CLI (`hookwire subscriptions|dlq|unrouted|replay|pause|resume`):
//! a thin client of the operator API on any hookwire process's admin
//! listener. Tables by default, the API's JSON with `--json`; replays and
//! purges stream their progress and draw it on stderr.

mod events;
mod subscriptions;

pub use events::{EventsAction, events_action};
pub use subscriptions::{SubscriptionsAction, subscriptions_action};

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    admin::api::{PauseState, SubscriptionStatus},
    operator::{Page, Report, select::Detail},
};

/// Where the API is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Api {
    /// The admin listener of any hookwire process.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9090",
        env = "HOOKWIRE_ADMIN_URL",
        global = true,
        display_order = 100
    )]
    pub admin_url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true, display_order = 101)]
    pub json: bool,
}

/// Which messages a replay or purge acts on (at least one, or `--all`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Selectors {
    /// An event id (repeatable).
    #[arg(long = "id", value_name = "EVENT_ID")]
    pub ids: Vec<String>,
    /// Event type pattern, topic style: invoice.*, customer.#
    #[arg(long = "type", value_name = "PATTERN")]
    pub event_type: Option<String>,
    /// Source name.
    #[arg(long)]
    pub source: Option<String>,
    /// The last attempt's HTTP status.
    #[arg(long)]
    pub status: Option<u16>,
    /// Dead-letter reason: retries_exhausted, dead_letter_status, transform_failed, delivery_limit, malformed.
    #[arg(long)]
    pub reason: Option<String>,
    /// Last failure at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub failed_after: Option<String>,
    /// Last failure before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub failed_before: Option<String>,
    /// Every dead letter (or unrouted event) listed now.
    #[arg(long)]
    pub all: bool,
    /// Only count what would be affected.
    #[arg(long)]
    pub dry_run: bool,
}

impl Selectors {
    fn body(&self) -> Value {
        let mut body = json!({ "dry_run": self.dry_run });
        let mut put = |key: &str, value: Value| {
            body[key] = value;
        };
        if !self.ids.is_empty() {
            put("ids", json!(self.ids));
        }
        if let Some(v) = &self.event_type {
            put("type", json!(v));
        }
        if let Some(v) = &self.source {
            put("source", json!(v));
        }
        if let Some(v) = self.status {
            put("status", json!(v));
        }
        if let Some(v) = &self.reason {
            put("reason", json!(v));
        }
        if let Some(v) = &self.failed_after {
            put("failed_after", json!(v));
        }
        if let Some(v) = &self.failed_before {
            put("failed_before", json!(v));
        }
        if self.all {
            put("all", json!(true));
        }
        body
    }
}

/// What operators work on: a subscription's dead letters or the unrouted events.
#[derive(Debug, Clone)]
pub enum Target {
    DeadLetters(String),
    Unrouted,
}

impl Target {
    fn path(&self) -> String {
        match self {
            Self::DeadLetters(name) => format!("/api/v1/subscriptions/{}/dead-letters", urlencode(name)),
            Self::Unrouted => "/api/v1/unrouted".to_owned(),
        }
    }
}

struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    fn new(api: &Api) -> Result<Self, String> {
        let token = std::env::var("HOOKWIRE_ADMIN_TOKEN")
            .map_err(|_| "set HOOKWIRE_ADMIN_TOKEN to one of the server's admin.tokens".to_owned())?;
        Ok(Self {
            base: api.admin_url.trim_end_matches('/').to_owned(),
            token,
            // No overall timeout: a replay may rightly take minutes, and its
            // progress stream shows it is alive.
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?,
            runtime: tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime"),
        })
    }

    /// Sends a request and returns the body of a 2xx answer; anything else
    /// becomes an error carrying the problem's `detail`.
    fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<String, String> {
        self.send_if_match(method, path, body, None)
    }

    /// [`Client::send`] with `If-Match: "<version>"` when given.
    fn send_if_match(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        version: Option<u64>,
    ) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let mut request = self.http.request(method, &url).bearer_auth(&self.token);
            if let Some(version) = version {
                request = request.header("if-match", format!("\"{version}\""));
            }
            if let Some(body) = body {
                request = request.header("content-type", "application/json").body(body.to_string());
            }
            let response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status();
            let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
            if status.is_success() { Ok(text) } else { Err(format!("{url}: {status}: {}", problem_detail(&text))) }
        })
    }

    /// Runs a replay or purge, drawing its streamed progress; returns the
    /// final report (as JSON text).
    fn operation(&self, method: reqwest::Method, path: &str, body: Value) -> Result<String, String> {
        let url = format!("{}{path}", self.base);
        self.runtime.block_on(async {
            let request = self
                .http
                .request(method, &url)
                .bearer_auth(&self.token)
                .header("accept", "application/x-ndjson")
                .header("content-type", "application/json")
                .body(body.to_string());
            let mut response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(format!("{url}: {status}: {}", problem_detail(&text)));
            }
            let mut bar = ProgressBar::new();
            let mut buffer = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
                    if let Some(progress) = value.get("progress") {
                        if let Ok(report) = serde_json::from_value::<Report>(progress.clone()) {
                            bar.draw(&report);
                        }
                    } else if let Some(result) = value.get("result") {
                        bar.clear();
                        return Ok(result.to_string());
                    } else if let Some(problem) = value.get("error") {
                        bar.clear();
                        return Err(format!("{url}: {}", problem_detail(&problem.to_string())));
                    }
                }
            }
            bar.clear();
            Err(format!("{url}: the answer ended before the operation reported its result"))
        })
    }
}

fn problem_detail(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|p| p["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// Progress on stderr: redrawn in place on a terminal, a line every few
/// seconds otherwise (logs of a scripted run still show it moving).
struct ProgressBar {
    terminal: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl ProgressBar {
    fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        // Off a terminal, the first line comes after the first interval too:
        // a quick operation prints nothing but its result.
        Self { terminal, last: (!terminal).then(Instant::now), drawn: false }
    }

    fn draw(&mut self, report: &Report) {
        let every = if self.terminal { Duration::ZERO } else { Duration::from_secs(5) };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        const WIDTH: u64 = 30;
        let counts = format!("{} matched, {} replayed, {} purged", report.matched, report.replayed, report.purged);
        // An archive replay cannot know its total in advance.
        let text = if report.total == 0 {
            format!("{} scanned, {counts}", report.scanned)
        } else {
            let filled = (report.scanned * WIDTH).checked_div(report.total).unwrap_or(0).min(WIDTH) as usize;
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
            format!("[{bar}] {}/{} scanned, {counts}", report.scanned, report.total)
        };
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal { write!(stderr, "\r\x1b[2K{text}") } else { writeln!(stderr, "{text}") };
        let _ = stderr.flush();
        self.drawn = true;
    }

    fn clear(&mut self) {
        if self.terminal && self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
        }
    }
}

fn run(action: impl FnOnce() -> Result<String, String>) -> ExitCode {
    match action() {
        Ok(text) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("unexpected answer from the API: {e}"))
}

/// `hookwire subscriptions`.
pub fn subscriptions(api: &Api) -> ExitCode {
    run(|| {
        let body = Client::new(api)?.send(reqwest::Method::GET, "/api/v1/subscriptions", None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let list: Vec<SubscriptionStatus> = parse(&body)?;
        let mut rows = vec![
            ["NAME", "DESTINATION", "CIRCUIT", "READY", "RETRYING", "DEAD", "CONSUMERS", "PAUSED", "TOPICS"]
                .map(String::from)
                .to_vec(),
        ];
        for s in &list {
            rows.push(vec![
                s.name.clone(),
                s.destination_host.clone(),
                s.circuit.clone().unwrap_or_else(|| "-".to_owned()),
                s.work.messages.to_string(),
                s.retry.iter().map(|q| q.messages).sum::<u32>().to_string(),
                s.dead.messages.to_string(),
                s.work.consumers.to_string(),
                if s.paused { "yes" } else { "no" }.to_owned(),
                s.topics.join(", "),
            ]);
        }
        Ok(table(&rows))
    })
}

/// `hookwire audit`.
pub fn audit(api: &Api, target: Option<&str>, limit: Option<usize>, after: Option<u64>) -> ExitCode {
    run(|| {
        let mut query = Vec::new();
        if let Some(target) = target {
            query.push(format!("target={}", urlencode(target)));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(after) = after {
            query.push(format!("after={after}"));
        }
        let path = format!("/api/v1/audit{}{}", if query.is_empty() { "" } else { "?" }, query.join("&"));
        let body = Client::new(api)?.send(reqwest::Method::GET, &path, None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let page: Value = parse(&body)?;
        let mut rows = vec![["ID", "AT", "BY", "ACTION", "TARGET", "OUTCOME", "DETAIL"].map(String::from).to_vec()];
        for r in page["records"].as_array().into_iter().flatten() {
            let text = |key: &str| r[key].as_str().map(str::to_owned).unwrap_or_else(|| r[key].to_string());
            let mut detail = if r["detail"].is_null() { String::new() } else { r["detail"].to_string() };
            if detail.len() > 80 {
                let cut = (0..=77).rev().find(|&i| detail.is_char_boundary(i)).unwrap_or(0);
                detail = format!("{}...", &detail[..cut]);
            }
            rows.push(vec![
                text("id"),
                text("at"),
                text("by"),
                text("action"),
                text("target"),
                text("outcome"),
                detail,
            ]);
        }
        let mut out = table(&rows);
        if let Some(next) = page["next_after"].as_u64() {
            out += &format!("more: --after {next}\n");
        }
        Ok(out)
    })
}

/// `hookwire dlq list` / `hookwire unrouted list`.
pub fn list(api: &Api, target: &Target, limit: Option<usize>, after: Option<&str>) -> ExitCode {
    run(|| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if let Some(limit) = limit {
            query.append_pair("limit", &limit.to_string());
        }
        if let Some(after) = after {
            query.append_pair("after", after);
        }
        let path = format!("{}?{}", target.path(), query.finish());
        let body = Client::new(api)?.send(reqwest::Method::GET, &path, None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let page: Page = parse(&body)?;
        let mut rows = vec![
            ["EVENT_ID", "SOURCE", "TYPE", "ATTEMPTS", "STATUS", "REASON", "LAST_FAILURE", "LAST_ERROR"]
                .map(String::from)
                .to_vec(),
        ];
        let dash = || "-".to_owned();
        for item in &page.items {
            rows.push(vec![
                item.event_id.clone(),
                item.source.clone().unwrap_or_else(dash),
                item.event_type.clone().unwrap_or_else(dash),
                item.attempts.to_string(),
                item.last_status.map_or_else(dash, |s| s.to_string()),
                item.reason.clone().unwrap_or_else(dash),
                item.last_failure_at.clone().unwrap_or_else(dash),
                item.last_error.as_deref().map_or_else(dash, |e| shorten(e, 48)),
            ]);
        }
        let mut out = table(&rows);
        out += &format!("{} shown of {}\n", page.items.len(), page.depth);
        if let Some(next) = page.next_after {
            out += &format!("next page: --after {next}\n");
        }
        Ok(out)
    })
}

/// `hookwire dlq show` / `hookwire unrouted show`.
pub fn show(api: &Api, target: &Target, id: &str) -> ExitCode {
    run(|| {
        let path = format!("{}/{}", target.path(), urlencode(id));
        let body = Client::new(api)?.send(reqwest::Method::GET, &path, None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let detail: Detail = parse(&body)?;
        let s = &detail.summary;
        let mut out = String::new();
        let mut field = |name: &str, value: Option<String>| {
            out += &format!("{name:<17}{}\n", value.unwrap_or_else(|| "-".to_owned()));
        };
        field("event id:", Some(s.event_id.clone()));
        field("source:", s.source.clone());
        field("type:", s.event_type.clone());
        field("received at:", s.received_at.clone());
        field("attempts:", Some(s.attempts.to_string()));
        field("reason:", s.reason.clone());
        field("content type:", s.content_type.clone());
        for (name, value) in &detail.headers {
            field(&format!("header {name}:"), Some(value.clone()));
        }
        out += "history:\n";
        for attempt in &detail.history {
            let status = attempt.status.map_or_else(|| "-".to_owned(), |s| s.to_string());
            out += &format!("  {}  {status:>3}  {}\n", attempt.at, attempt.error);
            if let Some(response) = &attempt.response {
                out += &format!("       response: {}\n", shorten(response, 200));
            }
        }
        out += &format!("body ({} bytes):\n", s.body_bytes);
        match (&detail.body, &detail.body_base64) {
            (Some(text), _) => out += &format!("{text}\n"),
            (None, Some(encoded)) => out += &format!("(binary, base64) {encoded}\n"),
            (None, None) => {}
        }
        Ok(out)
    })
}

/// `hookwire dlq replay` / `hookwire unrouted replay`.
pub fn replay(api: &Api, target: &Target, selectors: &Selectors) -> ExitCode {
    run(|| {
        let path = format!("{}/replay", target.path());
        let body = Client::new(api)?.operation(reqwest::Method::POST, &path, selectors.body())?;
        report(api, &body, "replayed")
    })
}

/// `hookwire dlq purge` / `hookwire unrouted purge`.
pub fn purge(api: &Api, target: &Target, selectors: &Selectors, yes: bool) -> ExitCode {
    run(|| {
        if !yes && !selectors.dry_run {
            return Err("purging deletes messages for good: pass --yes (or look first with --dry-run)".to_owned());
        }
        let body = Client::new(api)?.operation(reqwest::Method::DELETE, &target.path(), selectors.body())?;
        report(api, &body, "purged")
    })
}

/// `hookwire replay SUBSCRIPTION --from … [--to …] [--type …]`.
pub fn replay_window(
    api: &Api,
    subscription: &str,
    from: &str,
    to: Option<&str>,
    event_type: Option<&str>,
    dry_run: bool,
) -> ExitCode {
    run(|| {
        let mut body = json!({ "from": from, "dry_run": dry_run });
        if let Some(to) = to {
            body["to"] = json!(to);
        }
        if let Some(pattern) = event_type {
            body["type"] = json!(pattern);
        }
        let path = format!("/api/v1/subscriptions/{}/replay", urlencode(subscription));
        let answer = Client::new(api)?.operation(reqwest::Method::POST, &path, body)?;
        report(api, &answer, "replayed")
    })
}

fn report(api: &Api, body: &str, verb: &str) -> Result<String, String> {
    if api.json {
        return Ok(format!("{body}\n"));
    }
    let r: Report = parse(body)?;
    let done = if verb == "purged" { r.purged } else { r.replayed };
    let mut out = if r.dry_run {
        format!("dry run: {} matched and would be {verb} ({} scanned)\n", r.matched, r.scanned)
    } else {
        format!("{done} {verb} of {} matched ({} scanned)\n", r.matched, r.scanned)
    };
    if r.skipped > 0 {
        out += &format!("{} matched but left in place (malformed, or still no subscription for them)\n", r.skipped);
    }
    if r.total > 0 && r.scanned < r.total {
        out += &format!(
            "stopped after {} of {} messages: the rest was held by another consumer (another operator's \
             listing or replay?); run the command again\n",
            r.scanned, r.total
        );
    }
    if r.failed > 0 {
        out += &format!("{} not confirmed by RabbitMQ and left in place: run the command again\n", r.failed);
    }
    Ok(out)
}

/// `hookwire pause` / `hookwire resume`.
pub fn set_paused(api: &Api, subscription: &str, paused: bool) -> ExitCode {
    run(|| {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("/api/v1/subscriptions/{}/{verb}", urlencode(subscription));
        let body = Client::new(api)?.send(reqwest::Method::POST, &path, None)?;
        if api.json {
            return Ok(body + "\n");
        }
        let state: PauseState = parse(&body)?;
        let now = if state.paused { "paused (events keep queueing)" } else { "resumed" };
        Ok(format!("{}: {now}\n", state.subscription))
    })
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn shorten(text: &str, max: usize) -> String {
    let flat = text.replace(['\n', '\r'], " ");
    if flat.chars().count() <= max {
        return flat;
    }
    flat.chars().take(max - 1).chain(std::iter::once('…')).collect()
}

/// Left-aligned columns, two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.get(c).map_or(0, |v| v.chars().count())).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> =
            row.iter().enumerate().map(|(c, v)| format!("{v:<width$}", width = widths[c])).collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_become_the_api_body() {
        let s = Selectors { ids: vec!["a".into()], status: Some(503), dry_run: true, ..Default::default() };
        assert_eq!(s.body(), json!({"ids": ["a"], "status": 503, "dry_run": true}));
        let all = Selectors { all: true, ..Default::default() };
        assert_eq!(all.body(), json!({"all": true, "dry_run": false}));
    }

    #[test]
    fn shortens_long_errors_on_one_line() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten(&"x".repeat(60), 10).chars().count(), 10);
    }
}
