//! Fuzzes the config file path: TOML parsing, `${VAR}` interpolation,
//! validation and building every source's scheme; plus the routing-key
//! helpers. See ../README.md.
#![no_main]

use hookwire::{
    config::Config,
    envelope::{routing_word, topic_matches},
    ingress::Sources,
};
use libfuzzer_sys::fuzz_target;

/// Resolves some variable names, so both the set and unset paths are taken.
fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
        "AMQP" => Some("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
        "EMPTY" => Some(String::new()),
        // Must come out literally: interpolation is not recursive.
        "NESTED" => Some("${SECRET}$$".to_owned()),
        n if n.len() % 2 == 0 => Some(format!("value-of-{n}")),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    if let Ok(config) = Config::from_toml(text, &env) {
        let _ = config.warnings();
        let _ = Sources::build(&config.sources);
    }

    // routing_word's documented contract.
    let word = routing_word(text);
    assert!(!word.is_empty() && word.len() <= 180, "{word:?}");
    assert!(word.chars().all(|c| c.is_ascii_alphanumeric() || "_-:.".contains(c)), "{word:?}");
    assert!(word.split('.').all(|w| !w.is_empty()), "{word:?}");

    // First line a topic pattern, the rest a routing key.
    let (pattern, key) = text.split_once('\n').unwrap_or((text, ""));
    let _ = topic_matches(pattern, key);
    let routing_key = format!("src.{}", routing_word(key));
    let _ = topic_matches(pattern, &routing_key);
    assert!(topic_matches(&routing_key, &routing_key), "{routing_key:?}");
    assert!(topic_matches("#", &routing_key));
    assert!(topic_matches("src.#", &routing_key));
});
