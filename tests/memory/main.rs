//! Memory that must stay bounded whatever the reader does.
//!
//! Its own test binary because it installs a counting global allocator and
//! the process-wide metrics recorder, and measures the heap: nothing else may
//! allocate beside it.
//!
//! The bound is checked on bytes held, not on time: the test waits for the
//! upkeep thread to have run, however long that takes on a slow machine, so
//! it cannot pass or fail by the clock.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicIsize, Ordering},
    time::{Duration, Instant},
};

/// The system allocator, counting the bytes it holds.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Blocks until the upkeep thread has completed `passes` more passes.
fn wait_for_upkeep(passes: u64) {
    let target = hookwire::telemetry::upkeep_runs() + passes;
    // Generous: this bounds a hang, it does not measure anything.
    let deadline = Instant::now() + Duration::from_secs(60);
    while hookwire::telemetry::upkeep_runs() < target {
        assert!(Instant::now() < deadline, "the metrics upkeep never ran: histogram samples are never drained");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records `count` observations, then lets the upkeep drain them. The
/// exporter frees drained sample blocks through crossbeam-epoch, which runs
/// deferred frees on a later pass that has something to clear: a couple of
/// single observations, each followed by a pass, give it those passes.
fn record_and_settle(histogram: &metrics::Histogram, count: usize) {
    for i in 0..count {
        histogram.record((i % 1000) as f64 * 1e-4);
    }
    wait_for_upkeep(2);
    for _ in 0..3 {
        histogram.record(0.001);
        wait_for_upkeep(1);
    }
}

/// Issue 13: with nobody scraping `/metrics`, every histogram observation
/// used to stay buffered in the exporter, about 16 bytes each with block
/// overhead, forever. With the upkeep, the heap after each round of 500,000
/// observations is back where it was after the first.
#[test]
fn histogram_samples_do_not_accumulate_without_a_scraper() {
    let _handle = hookwire::telemetry::metrics_handle();
    let histogram = metrics::histogram!(hookwire::telemetry::metric::END_TO_END, "subscription" => "memory-test");
    const PER_ROUND: usize = 500_000;
    record_and_settle(&histogram, PER_ROUND);
    let baseline = HELD.load(Ordering::Relaxed);
    let mut growth = Vec::new();
    for _ in 0..3 {
        record_and_settle(&histogram, PER_ROUND);
        growth.push(HELD.load(Ordering::Relaxed) - baseline);
    }
    // Unbounded buffering would show 8 MB more after every round.
    assert!(
        growth.iter().all(|&bytes| bytes < 1024 * 1024),
        "the heap kept growing with no scrape, bytes over the first round after each of 3 more rounds of {PER_ROUND} observations: {growth:?}"
    );
}
