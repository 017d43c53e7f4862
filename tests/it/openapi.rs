//! `docs/openapi.json` is the operator API's contract, served at
//! `/api/v1/openapi.json`. These tests keep it honest: what is served is the
//! file, every route of `admin::api::router()` is documented (and nothing
//! else), and every `$ref` resolves. A route added without its documentation
//! fails here.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::TestApp;

/// Every (method, path) of `router()` in `src/admin/api.rs`.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/subscriptions"),
    ("post", "/api/v1/subscriptions"),
    ("get", "/api/v1/subscriptions/{name}"),
    ("put", "/api/v1/subscriptions/{name}"),
    ("patch", "/api/v1/subscriptions/{name}"),
    ("delete", "/api/v1/subscriptions/{name}"),
    ("get", "/api/v1/subscriptions/{name}/dead-letters"),
    ("delete", "/api/v1/subscriptions/{name}/dead-letters"),
    ("get", "/api/v1/subscriptions/{name}/dead-letters/{event_id}"),
    ("post", "/api/v1/subscriptions/{name}/dead-letters/replay"),
    ("post", "/api/v1/subscriptions/{name}/pause"),
    ("post", "/api/v1/subscriptions/{name}/resume"),
    ("post", "/api/v1/subscriptions/{name}/replay"),
    ("get", "/api/v1/audit"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/events/{id}"),
    ("post", "/api/v1/events/{id}/resend"),
    ("get", "/api/v1/subscriptions/{name}/attempts"),
    ("post", "/api/v1/subscriptions/{name}/signing-secret/rotate"),
    ("get", "/api/v1/unrouted"),
    ("delete", "/api/v1/unrouted"),
    ("get", "/api/v1/unrouted/{event_id}"),
    ("post", "/api/v1/unrouted/replay"),
];

const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn document() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// Every `$ref` value anywhere in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                out.push(target);
            }
            map.values().for_each(|v| refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn the_served_document_is_the_file_and_needs_a_token() {
    let app = TestApp::operator("").await;
    assert_eq!(app.api_get("/api/v1/openapi.json").await, document());
    let anonymous = app.http.get(app.admin_url("/api/v1/openapi.json")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = app.http.get(app.admin_url("/api/v1/openapi.json")).bearer_auth("not-the-token-at-all").send();
    assert_eq!(wrong.await.unwrap().status(), 401);
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("path item").keys().filter(|k| METHODS.contains(&k.as_str()));
            methods.map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, routed);
}

#[test]
fn every_ref_resolves_under_components() {
    let doc = document();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        assert!(target.starts_with("#/components/"), "{target} points outside components");
        assert!(doc.pointer(&target[1..]).is_some(), "{target} does not resolve");
    }
}
