//! The `hookwire` binary: `check` and `sign`, as a user runs them.

use std::process::Command;

use crate::helpers::{GITHUB_SECRET, TestApp};

fn hookwire(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hookwire")).args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap()
}

#[test]
fn check_accepts_the_example_config_and_prints_topology_without_secrets() {
    let out = hookwire(&["check", "--config", "config/hookwire.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("hookwire.events (topic, durable, alternate-exchange=hookwire.unrouted)"));
    assert!(stdout.contains("archive: on, events kept 7days or up to 10000000000 bytes"), "{stdout}");
    assert!(stdout.contains("hookwire.archive (x-queue-type=stream, x-max-age=604800s"), "{stdout}");
    assert!(stdout.contains("hookwire.sub.billing.retry.30s"));
    assert!(stdout.contains("hookwire.events -> hookwire.sub.billing  acme.invoice.*"));
    assert!(stdout.contains("amqp://guest:***@"));
    assert!(!stdout.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    assert!(!stdout.contains(GITHUB_SECRET));
}

#[test]
fn check_names_the_bad_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[subscriptions.billing]\ntopics = [\"a.#\"]\nurl = \"http://x/\"\ntimeout = \"soon\"\n")
        .unwrap();
    let out = hookwire(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("subscriptions.billing.timeout"), "{stderr}");

    std::fs::write(
        &path,
        "[sources.a]\nscheme = \"hmac\"\nheader = \"x\"\nsecrets = [\"${HOOKWIRE_TEST_UNSET_VAR}\"]\n",
    )
    .unwrap();
    let out = hookwire(&["check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HOOKWIRE_TEST_UNSET_VAR") && stderr.contains("sources.a.secrets[0]"), "{stderr}");
}

#[tokio::test]
async fn sign_prints_headers_the_ingress_accepts() {
    let app = TestApp::start("").await;
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body.json");
    let body = r#"{"type":"invoice.paid"}"#;
    std::fs::write(&body_path, body).unwrap();
    // The test config's sources, written out for the CLI to read.
    let config_path = dir.path().join("hookwire.toml");
    std::fs::write(&config_path, crate::helpers::config_text("unused", crate::helpers::AMQP_URL, "")).unwrap();
    for source in ["acme", "github"] {
        let out = hookwire(&[
            "sign",
            "--config",
            config_path.to_str().unwrap(),
            "--source",
            source,
            "--body",
            body_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut headers: Vec<(String, String)> = stdout
            .lines()
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_owned(), v.to_owned())
            })
            .collect();
        if source == "github" {
            headers.push(("x-github-event".into(), "push".into()));
        }
        let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let response = app.post(source, &refs, body).await;
        assert_eq!(response.status(), 202, "{source}: {}", response.text().await.unwrap());
    }
    let out = hookwire(&[
        "sign",
        "--config",
        config_path.to_str().unwrap(),
        "--source",
        "acme",
        "--body",
        body_path.to_str().unwrap(),
        "--curl",
    ]);
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("curl -sS -X POST 'http://127.0.0.1:0/webhooks/acme'"), "{line}");
    assert!(line.contains("-H 'webhook-signature: v1,"));
}

/// `hookwire serve` re-reads its file on SIGHUP and when the file changes:
/// a new source is accepted without a restart, a broken file is refused
/// whole and the running configuration stays (issue 9).
#[tokio::test]
async fn serve_reloads_its_file_on_sighup_and_on_change_and_refuses_a_broken_one() {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ingress, admin) = (free(), free());
    let namespace = format!("hwtest-{}", uuid::Uuid::now_v7().simple());
    let base = format!(
        "[ingress]\nlisten = \"{ingress}\"\n[admin]\nlisten = \"{admin}\"\n[rabbitmq]\nnamespace = \"{namespace}\"\n\
         [sources.acme]\nscheme = \"none\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, reference) = (dir.path().join("hookwire.toml"), dir.path().join("mtime"));
    std::fs::write(&path, &base).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let post = |source: &str| http.post(format!("http://{ingress}/webhooks/{source}")).body(r#"{"type":"x"}"#).send();
    let ready = format!("http://{admin}/readyz");
    crate::helpers::eventually(std::time::Duration::from_secs(20), "serve is ready", || {
        let (http, ready) = (http.clone(), ready.clone());
        async move { http.get(ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
    assert_eq!(post("newco").await.unwrap().status(), 404);

    // SIGHUP alone: the file's modification time is put back, so only the
    // signal can make it reload.
    Command::new("cp").args(["-p", path.to_str().unwrap(), reference.to_str().unwrap()]).status().unwrap();
    std::fs::write(&path, format!("{base}[sources.newco]\nscheme = \"none\"\n")).unwrap();
    Command::new("touch").args(["-m", "-r", reference.to_str().unwrap(), path.to_str().unwrap()]).status().unwrap();
    Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    crate::helpers::eventually(std::time::Duration::from_secs(10), "the new source is accepted", || {
        let response = post("newco");
        async move { response.await.unwrap().status() == 202 }
    })
    .await;

    // A broken file, noticed on disk: refused whole, nothing changes.
    std::fs::write(&path, format!("{base}[sources.newco]\nscheme = \"no-such-scheme\"\n")).unwrap();
    let metrics = format!("http://{admin}/metrics");
    crate::helpers::eventually(std::time::Duration::from_secs(10), "the broken file is refused", || {
        let (http, metrics) = (http.clone(), metrics.clone());
        async move {
            let text = http.get(metrics).send().await.unwrap().text().await.unwrap();
            text.contains("hookwire_config_reloads_total{outcome=\"refused\"}")
        }
    })
    .await;
    assert_eq!(post("newco").await.unwrap().status(), 202, "the running configuration stays");
    let text = http.get(&metrics).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("hookwire_config_reloads_total{outcome=\"applied\"} 1"), "{text}");

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();
    let config = hookwire::config::Config::from_toml(&base, &|_| None).unwrap();
    let conn = crate::helpers::connect_to(crate::helpers::AMQP_URL).await;
    hookwire::broker::Topology::from_config(&config).delete(&conn.create_channel().await.unwrap()).await.unwrap();
    crate::helpers::remove_event_log(&config.rabbitmq.namespace);
}

/// `hookwire subscriptions apply -f`: the plan first, then the changes;
/// unchanged definitions are left alone and `--prune` deletes the rest.
#[tokio::test]
async fn subscriptions_apply_prints_the_plan_and_converges() {
    let app = TestApp::operator("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.toml");
    let cli = |args: Vec<String>| {
        let admin = app.admin_url("");
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookwire"))
                .args(&args)
                .env("HOOKWIRE_ADMIN_URL", admin.trim_end_matches('/'))
                .env("HOOKWIRE_ADMIN_TOKEN", TestApp::TOKEN)
                .output()
                .await
                .unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            (out.status.success(), text)
        }
    };
    let apply = |extra: &[&str]| {
        let mut args: Vec<String> = ["subscriptions", "apply", "-f", file.to_str().unwrap()].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        cli(args)
    };
    let team = |url: &str| {
        format!(
            "[subscriptions.team-a]\ntopics = [\"acme.a.*\"]\nurl = \"{url}\"\nowner = \"team\"\n\
             [subscriptions.team-b]\ntopics = [\"acme.b.*\"]\nurl = \"http://127.0.0.1:9/b\"\n"
        )
    };
    std::fs::write(&file, team("http://127.0.0.1:9/a")).unwrap();

    let (ok, plan) = apply(&["--dry-run"]).await;
    assert!(ok, "{plan}");
    assert!(plan.contains("create") && plan.contains("team-a") && plan.contains("dry run"), "{plan}");
    assert!(app.catalog().state().is_empty(), "a dry run changes nothing");
    let (ok, out) = apply(&[]).await;
    assert!(ok, "{out}");
    assert_eq!(app.catalog().state().len(), 2);

    std::fs::write(&file, team("http://127.0.0.1:9/a2")).unwrap();
    let (ok, out) = apply(&[]).await;
    assert!(ok, "{out}");
    assert!(out.contains("update") && out.contains("unchanged"), "{out}");
    assert_eq!(app.catalog().state().get("team-a").unwrap().definition["url"], "http://127.0.0.1:9/a2");

    std::fs::write(
        &file,
        "[subscriptions.team-a]\ntopics = [\"acme.a.*\"]\nurl = \"http://127.0.0.1:9/a2\"\nowner = \"team\"\n",
    )
    .unwrap();
    let (ok, out) = apply(&[]).await;
    assert!(ok && out.contains("keep"), "{out}");
    assert_eq!(app.catalog().state().len(), 2, "without --prune nothing is deleted");
    let (ok, out) = apply(&["--prune"]).await;
    assert!(ok && out.contains("delete"), "{out}");
    let names: Vec<String> = app.catalog().state().entries().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names, ["team-a"]);

    // get, edit, delete.
    let (ok, out) = cli(["subscriptions", "get", "team-a"].map(String::from).to_vec()).await;
    assert!(ok && out.contains("team") && out.contains("acme.a.*"), "{out}");
    let edit = ["subscriptions", "edit", "team-a", "--set", "description=\"edited\""].map(String::from).to_vec();
    let (ok, out) = cli(edit).await;
    assert!(ok, "{out}");
    assert_eq!(app.catalog().state().get("team-a").unwrap().definition["description"], "edited");
    let (ok, out) = cli(["subscriptions", "delete", "team-a"].map(String::from).to_vec()).await;
    assert!(ok, "{out}");
    assert!(app.catalog().state().is_empty());

    // The audit log tells the story, newest first.
    let mut out = String::new();
    for _ in 0..100 {
        let (ok, text) = cli(["audit", "--target", "team-a"].map(String::from).to_vec()).await;
        assert!(ok, "{text}");
        out = text;
        if out.contains("delete") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let actions: Vec<&str> = out.lines().skip(1).filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(actions, ["delete", "update", "update", "create"], "{out}");
}

/// Issue 9: no secret reaches a log line, at the most verbose level, while
/// secrets are configured, given through the API (valid and refused),
/// rotated, changed, used for failing and successful deliveries, and while
/// a wrong token knocks. Scans the whole log of a real `hookwire serve`.
#[tokio::test]
async fn no_secret_reaches_the_log_at_debug_level() {
    use crate::helpers::{ACME_SECRET, Behavior, Sink};
    use reqwest::Method;
    use serde_json::json;
    const TOKEN: &str = "log-scan-operator-token-0123456789";
    const WRONG_TOKEN: &str = "log-scan-wrong-token-9876543210";
    const SECRET_KEY: &str = "7c1f3a9e5b2d4c6e8a0b1d3f5e7a9c2b4d6f8e0a1c3e5b7d9f2a4c6e8b0d1f3a";
    const SIGNING: &str = "whsec_bG9nc2NhbnNpZ25pbmdzZWNyZXQwMTIzNDU2";
    const API_KEY: &str = "log-scan-api-key-value-42";
    const NEW_API_KEY: &str = "log-scan-changed-api-key-43";
    const PASSWORD: &str = "log-scan-basic-password-44";
    const REFUSED: &str = "log-scan-secret-of-a-refused-definition";

    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ingress, admin) = (free(), free());
    let namespace = format!("hwtest-{}", uuid::Uuid::now_v7().simple());
    let text = crate::helpers::config_text(&namespace, crate::helpers::AMQP_URL, "")
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{ingress}\""), 1)
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{admin}\"\ntokens = [\"{TOKEN}\"]\nsecret_key = \"{SECRET_KEY}\""),
            1,
        );
    let config = hookwire::config::Config::from_toml(&text, &|_| None).unwrap();
    let sources = hookwire::ingress::Sources::build(&config.sources).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = (dir.path().join("hookwire.toml"), dir.path().join("hookwire.log"));
    std::fs::write(&path, &text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookwire"))
        .args(["serve", "--config", path.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .env("HOOKWIRE_LOG_FORMAT", "json")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let api = |method: Method, path: &str| http.request(method, format!("http://{admin}{path}")).bearer_auth(TOKEN);
    let ready = format!("http://{admin}/readyz");
    crate::helpers::eventually(std::time::Duration::from_secs(20), "serve is ready", || {
        let (http, ready) = (http.clone(), ready.clone());
        async move { http.get(ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    let sink = Sink::start(Behavior::Status(500)).await;
    let definition = json!({
        "name": "scanned", "topics": ["acme.#"], "url": sink.url("/"), "retry": ["1s"],
        "signing_secret": SIGNING, "headers": {"x-api-key": API_KEY},
        "auth": {"basic": {"user": "hookwire", "password": PASSWORD}},
    });
    let created = api(Method::POST, "/api/v1/subscriptions").json(&definition).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let refused = json!({"name": "refused", "topics": ["acme.#"], "url": "not a url", "signing_secret": REFUSED});
    let refused = api(Method::POST, "/api/v1/subscriptions").json(&refused).send().await.unwrap();
    assert_eq!(refused.status(), 422);
    let knock = http.get(format!("http://{admin}/api/v1/subscriptions")).bearer_auth(WRONG_TOKEN).send().await;
    assert_eq!(knock.unwrap().status(), 401);

    // A delivery that fails once, then succeeds.
    let body = br#"{"type":"scan.me"}"#;
    let mut request = http.post(format!("http://{ingress}/webhooks/acme")).body(&body[..]);
    let signed = sources.get("acme").unwrap().scheme.sign(body, std::time::SystemTime::now(), "evt-scan").unwrap();
    for (name, value) in signed {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);
    sink.wait_for(1, std::time::Duration::from_secs(20)).await;
    sink.set(Behavior::Ok);
    sink.wait_for(2, std::time::Duration::from_secs(20)).await;

    let rotated = api(Method::POST, "/api/v1/subscriptions/scanned/signing-secret/rotate").send().await.unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: serde_json::Value = rotated.json().await.unwrap();
    let new_signing = rotated["signing_secret"].as_str().unwrap().to_owned();
    let version = rotated["version"].as_u64().unwrap();
    let patch = json!({"headers": {"x-api-key": NEW_API_KEY}});
    let patched = api(Method::PATCH, "/api/v1/subscriptions/scanned")
        .header("if-match", format!("\"{version}\""))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let audit = api(Method::GET, "/api/v1/audit").send().await.unwrap().text().await.unwrap();
    let deleted = api(Method::DELETE, "/api/v1/subscriptions/scanned?discard=true").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();

    let logged = std::fs::read_to_string(&log).unwrap();
    // The scan is worth something only if the log tells the whole story.
    for expected in ["evt-scan", "scanned", "\"level\":\"DEBUG\""] {
        assert!(logged.contains(expected), "{expected} is not in the log:\n{logged}");
    }
    assert!(audit.contains("rotate_signing_secret"), "{audit}");
    let secrets =
        [TOKEN, WRONG_TOKEN, SECRET_KEY, ACME_SECRET, SIGNING, API_KEY, NEW_API_KEY, PASSWORD, REFUSED, &new_signing];
    for secret in secrets {
        // Signing secrets are also looked for without their `whsec_` prefix.
        let bare = secret.strip_prefix("whsec_").unwrap_or(secret);
        for (what, text) in [("log", &logged), ("audit", &audit)] {
            if let Some(line) = text.lines().find(|l| l.contains(bare)) {
                panic!("a secret in the {what}: {line}");
            }
        }
    }
    let conn = crate::helpers::connect_to(crate::helpers::AMQP_URL).await;
    hookwire::broker::Topology::from_config(&config).delete(&conn.create_channel().await.unwrap()).await.unwrap();
    crate::helpers::remove_event_log(&config.rabbitmq.namespace);
}
