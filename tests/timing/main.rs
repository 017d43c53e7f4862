//! Integration tests that measure time or rates: the subscription rate limit
//! at the destination, the circuit breaker's pause, the isolation of a
//! healthy subscription from a hanging one, and of a subscription from one
//! of its own deliveries that hangs.
//!
//! They live in their own test binary because measurements are only
//! meaningful on a quiet machine: cargo runs test binaries one after another,
//! so these never share the CPU with the `it` suite, and [`serial`] keeps
//! them from overlapping each other.

// The harness is shared with tests/it; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;
mod protect;

/// Held for the whole of each test in this binary.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
