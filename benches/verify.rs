//! Signature verification throughput per scheme, for 1 KiB and 64 KiB bodies:
//! `cargo bench --bench verify`. Results in docs/BENCHMARKS.md.
//!
//! Each iteration verifies one valid request, which is the cost every
//! accepted webhook pays (a rejected one pays at most the same).

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hookwire::{
    config::Secret,
    ingress::{
        schemes::{
            Basic, Encoding, GenericHmac, HmacOptions, Paddle, Slack, Square, StandardWebhooks, Stripe, Template,
            Token, Twilio,
        },
        verify::{Algorithm, Incoming, Scheme},
    },
};

fn schemes() -> Vec<(&'static str, Box<dyn Scheme>)> {
    let s = |v: &str| vec![Secret::new(v)];
    let generic = HmacOptions {
        header: "x-signature".into(),
        algorithm: Algorithm::Sha512,
        encoding: Encoding::Base64,
        prefix: String::new(),
        template: Template::parse("{timestamp}.{body}").unwrap(),
        timestamp_header: Some("x-timestamp".into()),
        id_header: None,
        tolerance: Duration::from_secs(300),
    };
    vec![
        (
            "standard-webhooks",
            Box::new(StandardWebhooks::new(&s("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), None).unwrap()),
        ),
        (
            "standard-webhooks-v1a",
            Box::new(StandardWebhooks::new(&s("whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="), None).unwrap()),
        ),
        ("github", Box::new(GenericHmac::github(&s("gh-secret")))),
        ("shopify", Box::new(GenericHmac::shopify(&s("shp-secret")))),
        ("stripe", Box::new(Stripe::new(&s("whsec_stripe"), None))),
        ("slack", Box::new(Slack::new(&s("slack-secret"), None))),
        ("paddle", Box::new(Paddle::new(&s("pdl_ntf_secret"), None))),
        ("square", Box::new(Square::new(&s("sq-key"), "https://hooks.example.com/webhooks/square"))),
        ("twilio", Box::new(Twilio::new(&s("tw-token"), "https://hooks.example.com/webhooks/twilio"))),
        ("hmac-sha512", Box::new(GenericHmac::new(generic, &s("generic")).unwrap())),
        ("basic", Box::new(Basic::new(&s("user:password")).unwrap())),
        ("token", Box::new(Token::new(&s("a-long-shared-token"), None, None))),
    ]
}

fn body(name: &str, size: usize) -> Vec<u8> {
    if name == "twilio" {
        // Twilio posts form fields; a few fields padded to the size.
        let mut form = b"MessageSid=SM123&From=%2B15550001111&To=%2B15550002222&Body=".to_vec();
        form.resize(size, b'a');
        return form;
    }
    let mut json = br#"{"type":"invoice.paid","id":"evt_1","pad":""#.to_vec();
    json.resize(size - 2, b'x');
    json.extend_from_slice(b"\"}");
    json
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    for size in [1024, 64 * 1024] {
        let mut group = c.benchmark_group(format!("verify/{}KiB", size / 1024));
        group.throughput(Throughput::Bytes(size as u64));
        for (name, scheme) in schemes() {
            let body = body(name, size);
            let mut headers = HeaderMap::new();
            for (k, v) in scheme.sign(&body, now, "msg_bench").unwrap() {
                headers.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(&v).unwrap());
            }
            let request = Incoming { headers: &headers, body: &body, query: None };
            assert!(scheme.verify(&request, now).is_ok(), "{name}");
            group.bench_with_input(BenchmarkId::from_parameter(name), &request, |b, request| {
                b.iter(|| scheme.verify(std::hint::black_box(request), now))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
