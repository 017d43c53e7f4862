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
