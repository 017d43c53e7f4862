//! What each CLI subcommand does. `main.rs` parses arguments and calls here.

use std::{path::Path, process::ExitCode, time::SystemTime};

use crate::{
    app::{self, Role},
    broker::Topology,
    config::{Config, format_duration, redact_url},
    ingress::Sources,
    telemetry::{self, LogFormat},
};

/// Loads the config and builds everything that can still fail on it
/// (schemes, destinations), so `check` catches what `serve` would.
fn load(path: &Path) -> Result<(Config, Sources), String> {
    let at = |e: crate::config::ConfigError| format!("{}: {e}", path.display());
    let config = Config::load(path).map_err(at)?;
    let sources = Sources::build(&config.sources).map_err(at)?;
    for (name, subscription) in &config.subscriptions {
        crate::delivery::http::Destination::new(name, subscription).map_err(at)?;
        crate::delivery::transform::Jq::validate(name, subscription).map_err(at)?;
    }
    Ok((config, sources))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("starting the tokio runtime")
}

/// `hookwire serve`: run until SIGTERM/SIGINT, then drain.
pub fn serve(config_path: &Path, role: Role, log_format: LogFormat) -> ExitCode {
    telemetry::init_logging(log_format);
    runtime().block_on(serve_async(config_path, role))
}

async fn serve_async(config_path: &Path, role: Role) -> ExitCode {
    let config = match load(config_path) {
        Ok((config, _)) => config,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let app = match app::start(config, role).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    follow_the_file(&app, config_path).await;
    app.shutdown().await;
    ExitCode::SUCCESS
}

/// How often the config file's modification time is checked.
const FILE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Until SIGTERM/SIGINT: re-reads the config file on SIGHUP and whenever it
/// changes on disk, and applies it ([`app::App::reload`]).
async fn follow_the_file(app: &app::App, config_path: &Path) {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut last = modified(config_path);
    let mut poll = tokio::time::interval(FILE_POLL);
    #[cfg(unix)]
    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).expect("installing the SIGHUP handler");
    let stop = crate::shutdown::signal();
    tokio::pin!(stop);
    loop {
        #[cfg(unix)]
        let hangup = hup.recv();
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut stop => return,
            _ = hangup => reload(app, config_path, "SIGHUP"),
            _ = poll.tick() => {
                let now = modified(config_path);
                if now != last {
                    last = now;
                    reload(app, config_path, "file changed");
                }
            }
        }
    }
}

fn reload(app: &app::App, config_path: &Path, trigger: &str) {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            metrics::counter!(telemetry::metric::CONFIG_RELOADS, "outcome" => "refused").increment(1);
            tracing::error!(%error, trigger, "config reload refused; the running configuration stays");
            return;
        }
    };
    match app.reload(config) {
        Ok(notes) => {
            tracing::info!(trigger, "config reloaded");
            for note in notes {
                tracing::warn!("{note}");
            }
        }
        Err(error) => tracing::error!(%error, trigger, "config reload refused; the running configuration stays"),
    }
}

/// `hookwire check`: validate and print what would be declared.
pub fn check(config_path: &Path) -> ExitCode {
    let (config, sources) = match load(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("{}: OK", config_path.display()));
    line(format!("ingress: http://{}/webhooks/{{source}}", config.ingress.listen));
    line(format!("admin:   http://{} (/healthz /readyz /metrics)", config.admin.listen));
    line(match config.admin.tokens.len() {
        0 => "operator API: disabled (no admin.tokens configured)".to_owned(),
        n => format!("operator API: http://{}/api/v1 ({n} token(s), values not shown)", config.admin.listen),
    });
    for token in &config.admin.tokens {
        let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
        let limit = match &token.subscriptions {
            Some(patterns) => format!("subscriptions {}", patterns.join(", ")),
            None => "all subscriptions".to_owned(),
        };
        line(format!("  token {}: {}; {limit}", token.name, scopes.join(", ")));
    }
    let urls: Vec<String> = config.rabbitmq.url.iter().map(|u| redact_url(u.expose())).collect();
    line(format!("rabbitmq: {}", urls.join(", ")));
    line(if config.archive.enabled {
        format!(
            "archive: on, events kept {} or up to {} bytes (hookwire replay)",
            format_duration(config.archive.max_age),
            config.archive.max_bytes.0
        )
    } else {
        "archive: off (no time-window replay)".to_owned()
    });
    line("sources:".to_owned());
    for (name, source) in &config.sources {
        let built = sources.get(name).expect("built from the same config");
        line(format!(
            "  {name}: scheme={} secrets={} (not shown) {}",
            source.scheme.as_str(),
            source.secrets.len(),
            built.describe()
        ));
    }
    line("subscriptions:".to_owned());
    for (name, sub) in &config.subscriptions {
        let retry: Vec<String> = sub.retry.iter().map(|d| format_duration(*d)).collect();
        line(format!(
            "  {name}: {} topics={:?} timeout={} concurrency={} retry=[{}]",
            redact_url(&sub.url),
            sub.topics,
            format_duration(sub.timeout),
            sub.concurrency,
            retry.join(", "),
        ));
    }
    line(Topology::from_config(&config).describe().trim_end().to_owned());
    let warnings = config.warnings();
    if !warnings.is_empty() {
        line("warnings:".to_owned());
        for warning in warnings {
            line(format!("  {warning}"));
        }
    }
    emit(&out);
    ExitCode::SUCCESS
}

/// Writes command output to stdout; a closed pipe (`hookwire check | head`)
/// is not an error for a command whose reader has what it wanted.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// `hookwire sign`: headers (or a curl line) that make a valid request.
pub fn sign(
    config_path: &Path,
    source: &str,
    body_path: &Path,
    curl: bool,
    id: Option<String>,
    extra_headers: &[String],
) -> ExitCode {
    let (config, sources) = match load(config_path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(built) = sources.get(source) else {
        let known: Vec<&String> = config.sources.keys().collect();
        eprintln!("error: no source named {source:?} in {} (configured: {known:?})", config_path.display());
        return ExitCode::FAILURE;
    };
    let body = match std::fs::read(body_path) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", body_path.display());
            return ExitCode::FAILURE;
        }
    };
    let id = id.unwrap_or_else(|| format!("msg_{}", uuid::Uuid::now_v7().simple()));
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        eprintln!("error: --id must be visible ASCII without spaces (it travels in a header)");
        return ExitCode::FAILURE;
    }
    let Some(headers) = built.scheme.sign(&body, SystemTime::now(), &id) else {
        eprintln!("error: source {source:?} holds only public keys (whpk_), which cannot sign");
        return ExitCode::FAILURE;
    };
    if !curl {
        let text: String = headers.iter().map(|(name, value)| format!("{name}: {value}\n")).collect();
        emit(&text);
        return ExitCode::SUCCESS;
    }
    let mut addr = config.ingress.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut line = format!("curl -sS -X POST 'http://{addr}/webhooks/{source}' -H 'content-type: application/json'");
    for (name, value) in headers {
        line += &format!(" -H '{name}: {value}'");
    }
    for header in extra_headers {
        line += &format!(" -H '{header}'");
    }
    line += &format!(" --data-binary @'{}'\n", body_path.display());
    emit(&line);
    ExitCode::SUCCESS
}

/// `hookwire sink`: a throwaway destination that prints every webhook it
/// receives and answers 200, for trying hookwire out (the quick start runs
/// it on the example config's subscription URLs).
pub fn sink(listen: std::net::SocketAddr) -> ExitCode {
    runtime().block_on(sink_async(listen))
}

async fn sink_async(listen: std::net::SocketAddr) -> ExitCode {
    use axum::{body::Bytes, http::HeaderMap, http::Uri};
    async fn print(uri: Uri, headers: HeaderMap, body: Bytes) -> &'static str {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        println!(
            "{} webhook-id={} source={} type={} attempt={}\n  {}",
            uri.path(),
            header("webhook-id"),
            header("hookwire-source"),
            header("hookwire-event-type"),
            header("hookwire-attempt"),
            String::from_utf8_lossy(&body).trim_end()
        );
        "ok"
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("sink listening on http://{listen} (prints every request, answers 200)");
    let router = axum::Router::new().fallback(axum::routing::any(print));
    let served = axum::serve(listener, router).with_graceful_shutdown(crate::shutdown::signal()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `amqp://user:***@host/vhost`: the password never reaches the terminal.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"), "amqp://guest:***@127.0.0.1:5672/%2f");
        assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
        assert_eq!(redact_url("http://u@h/x"), "http://u@h/x");
    }
}
