//! The subscriptions catalog's log (`ns.catalog`): versions, conflicts
//! decided in log order the same way in every process, read-your-write, and
//! a new process rebuilding the same state from the log.

use std::time::{Duration, Instant};

use hookwire::{
    app::{self, Role},
    catalog::{Catalog, Change, Outcome},
};
use serde_json::json;

use crate::helpers::{TestApp, eventually};

const T: Duration = Duration::from_secs(10);

fn put(name: &str, expected_version: u64, url: &str) -> Change {
    Change::Put { name: name.into(), expected_version, definition: json!({"topics": ["acme.#"], "url": url}) }
}

fn url_of(catalog: &Catalog, name: &str) -> Option<String> {
    catalog.state().get(name).and_then(|e| e.definition["url"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn processes_converge_on_the_log_and_of_two_racing_writes_one_wins() {
    let app = TestApp::start("").await;
    let mut other = app::start(app.config.clone(), Role::Ingress).await.unwrap();
    let a = app.app.as_ref().unwrap().catalog.clone();
    let b = other.catalog.clone();

    let Outcome::Applied { version } = a.write("ops", put("billing", 0, "http://127.0.0.1:9/a"), T).await.unwrap()
    else {
        panic!("a create on an empty catalog applies");
    };
    let broker = app.app.as_ref().unwrap().broker.clone();
    eventually(T, "the reconciler plans its queues", || {
        let planned = broker.topology().subscription("billing").is_some();
        async move { planned }
    })
    .await;
    app.remember_live_topology(); // the reconciler declared its queues; clean them up
    // Read your write: the writer's own view holds it when the answer comes.
    assert_eq!(a.state().get("billing").map(|e| e.version), Some(version));
    let started = Instant::now();
    eventually(Duration::from_secs(2), "the other process sees the create", || {
        let seen = b.state().get("billing").map(|e| e.version) == Some(version);
        async move { seen }
    })
    .await;
    let converged = started.elapsed();
    assert!(converged < Duration::from_secs(2), "{converged:?}");
    assert_eq!(
        a.write("ops", put("billing", 0, "http://127.0.0.1:9/again"), T).await.unwrap(),
        Outcome::Conflict { current: version },
        "a second create of one name"
    );

    // Two processes replace the same version at once: the log orders them,
    // the first applies, the second finds the version moved.
    let (x, y) = tokio::join!(
        a.write("ops", put("billing", version, "http://127.0.0.1:9/x"), T),
        b.write("team", put("billing", version, "http://127.0.0.1:9/y"), T),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let winner = match (x, y) {
        (Outcome::Applied { version: v }, Outcome::Conflict { current }) if current == v => "x",
        (Outcome::Conflict { current }, Outcome::Applied { version: v }) if current == v => "y",
        other => panic!("exactly one must win: {other:?}"),
    };
    let expected = format!("http://127.0.0.1:9/{winner}");
    eventually(T, "both processes agree on the winner", || {
        let agree = url_of(&a, "billing").as_deref() == Some(expected.as_str())
            && url_of(&b, "billing").as_deref() == Some(expected.as_str());
        async move { agree }
    })
    .await;

    let current = a.state().get("billing").unwrap().version;
    let stale = Change::Delete { name: "billing".into(), expected_version: version };
    assert_eq!(a.write("ops", stale, T).await.unwrap(), Outcome::Conflict { current });
    a.write("ops", put("orders", 0, "http://127.0.0.1:9/o"), T).await.unwrap();
    let delete = Change::Delete { name: "billing".into(), expected_version: current };
    assert_eq!(b.write("ops", delete, T).await.unwrap(), Outcome::Applied { version: 0 });

    // A process started now rebuilds the same state from the log, and says
    // it is not ready until it has.
    other.shutdown().await;
    other = app::start(app.config.clone(), Role::Worker).await.unwrap();
    let ready = format!("http://{}/readyz", other.admin_addr);
    eventually(T, "the new process reads the log and becomes ready", || {
        let (http, ready) = (app.http.clone(), ready.clone());
        async move { http.get(ready).send().await.unwrap().status() == 200 }
    })
    .await;
    assert!(other.catalog.is_caught_up());
    assert_eq!(*other.catalog.state(), *a.state());
    let names: Vec<String> = other.catalog.state().entries().map(|(name, _)| name.to_owned()).collect();
    assert_eq!(names, ["orders"]);
    other.shutdown().await;
}

/// The audit log's pages reach past the records a process keeps in memory:
/// older ones are read back from the stream, in order, filters included.
#[tokio::test]
async fn audit_pages_reach_past_what_memory_keeps() {
    use hookwire::catalog::audit::{Audit, AuditRecord};
    let app = TestApp::operator("").await;
    let running = app.app.as_ref().unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let stream = app.topology.audit_stream.clone();
    let (audit, task) = Audit::spawn_keeping(running.broker.clone(), stream, 3, token.clone());
    for i in 0..12 {
        let target = if i % 2 == 0 { "even" } else { "odd" };
        audit.record(AuditRecord::new("test", "pause", target, "ok", json!({"i": i}))).await;
    }
    eventually(T, "the follower has read the newest record", || {
        let audit = audit.clone();
        async move {
            let newest = audit.page(1, None, None, |_| true).await.unwrap();
            newest.first().is_some_and(|r| r.detail["i"] == 11)
        }
    })
    .await;
    let numbers = |page: &[AuditRecord]| page.iter().map(|r| r.detail["i"].as_u64().unwrap()).collect::<Vec<_>>();

    // Pages of 5 with the cursor: all 12, newest first, across the boundary.
    let (mut seen, mut after) = (Vec::new(), None);
    loop {
        let page = audit.page(5, after, None, |_| true).await.unwrap();
        seen.extend(numbers(&page));
        after = page.last().map(|r| r.id);
        if page.len() < 5 {
            break;
        }
    }
    assert_eq!(seen, (0..12).rev().collect::<Vec<u64>>());
    let odd = audit.page(10, None, Some("odd"), |_| true).await.unwrap();
    assert_eq!(numbers(&odd), [11, 9, 7, 5, 3, 1]);
    let visible = audit.page(2, None, None, |r| r.target == "even").await.unwrap();
    assert_eq!(numbers(&visible), [10, 8]);
    token.cancel();
    task.await.unwrap();
}
