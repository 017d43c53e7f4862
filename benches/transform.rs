//! The jq cost per event: `cargo bench --bench transform`. The issue-4 case:
//! rename/pick 5 fields from a 2 KiB JSON event (target: under 20 µs), plus a
//! filter, measured as `Jq::evaluate` (input built from the envelope, program
//! run, output serialized), without the thread hand-off. Results in
//! docs/BENCHMARKS.md.

use std::time::{Duration, SystemTime};

/// The allocator the hookwire binary uses (src/main.rs), so the numbers are
/// the ones production sees: this work is allocation-heavy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use hookwire::{
    delivery::transform::{Jq, Verdict},
    envelope::Envelope,
};

pub const TRANSFORM: &str = "{id, kind: .type, amount: .body.data.object.amount, currency: .body.data.object.currency, customer: .body.data.object.customer}";

/// A Stripe-like event of about 2 KiB.
pub fn event() -> Envelope {
    let mut lines = String::new();
    for i in 0..20 {
        lines += &format!(
            r#"{{"id":"il_{i:04}","amount":{},"description":"Line item number {i} with some text","quantity":1}},"#,
            100 * i
        );
    }
    lines.pop();
    let body = format!(
        r#"{{"id":"evt_1NQ8wq2eZvKYlo2C","object":"event","type":"invoice.paid","created":1700000000,"data":{{"object":{{"id":"in_1NQ8wq","amount":4200,"currency":"eur","customer":"cus_42","status":"paid","lines":[{lines}],"metadata":{{"order":"A-1001","channel":"web"}}}}}}}}"#
    );
    Envelope {
        id: "evt_1NQ8wq2eZvKYlo2C".into(),
        source: "stripe".into(),
        event_type: "invoice.paid".into(),
        received_at: SystemTime::now(),
        content_type: Some("application/json".into()),
        headers: vec![("user-agent".into(), "Stripe/1.0".into())],
        body: Bytes::from(body),
    }
}

fn bench(c: &mut Criterion) {
    let event = event();
    assert!((1900..2300).contains(&event.body.len()), "{} bytes", event.body.len());
    let timeout = Duration::from_secs(1);
    let transform = Jq::build("bench", None, Some(TRANSFORM), timeout).unwrap().unwrap();
    assert!(matches!(transform.evaluate(&event), Verdict::Deliver(Some(_))));
    let filter =
        Jq::build("bench", Some(r#".type == "invoice.paid" and .body.data.object.amount > 1000"#), None, timeout)
            .unwrap()
            .unwrap();
    assert_eq!(filter.evaluate(&event), Verdict::Deliver(None));

    let mut group = c.benchmark_group("jq/2KiB");
    group.bench_function("transform_pick_5_fields", |b| b.iter(|| transform.evaluate(std::hint::black_box(&event))));
    group.bench_function("filter", |b| b.iter(|| filter.evaluate(std::hint::black_box(&event))));
    // The share of the body parse, for the record.
    group.bench_function("parse_body_only", |b| {
        b.iter(|| serde_json::from_slice::<jaq_json::Val>(std::hint::black_box(&event.body)).unwrap())
    });
    // Everything but the parse: the same transform over a tiny body.
    let tiny = Envelope {
        body: Bytes::from_static(br#"{"data":{"object":{"amount":1,"currency":"eur","customer":"c"}}}"#),
        ..event.clone()
    };
    group.bench_function("transform_tiny_body", |b| b.iter(|| transform.evaluate(std::hint::black_box(&tiny))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
