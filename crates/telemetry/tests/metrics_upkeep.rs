//! The process-wide recorder keeps histogram samples until its upkeep folds them into buckets:
//! without the upkeep thread, memory grows with every sample until somebody scrapes. Its own
//! test binary, so that its process holds nothing else that allocates meanwhile.

use std::time::Duration;

/// Resident memory of this process, in bytes (`/proc/self/statm`, pages of 4 KiB).
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm's second field");
    pages * 4096
}

fn record(samples: usize) {
    let histogram = metrics::histogram!("mcp_server_operation_duration_seconds");
    for i in 0..samples {
        histogram.record((i % 1000) as f64 / 1000.0);
    }
}

#[test]
fn histogram_samples_do_not_accumulate_without_scrapes() {
    // Installing the recorder starts the upkeep thread, which first runs one interval later
    // and then once per interval. The test is the only one in its process, so it knows that
    // schedule: the first round (about 0.1 s) ends before the first upkeep, and the second
    // round starts just after the second upkeep, with most of an interval before the third.
    // An upkeep inside the first round would let that round reuse its own memory.
    let handle = mcp_gateway_telemetry::metrics().expect("installing the recorder");
    // A sample is kept as a value and an instant (24 bytes): two million of them are ~48 MB
    // while they wait for the upkeep.
    const SAMPLES: usize = 2_000_000;
    let before = rss();
    record(SAMPLES);
    let first = rss().saturating_sub(before);
    assert!(
        first > 20 << 20,
        "recording {SAMPLES} samples should hold them until the upkeep (grew {first} bytes)"
    );
    // Nobody scrapes; the upkeep thread folds them into buckets and frees their blocks.
    std::thread::sleep(
        mcp_gateway_telemetry::METRICS_UPKEEP_INTERVAL * 2 + Duration::from_millis(200),
    );
    let middle = rss();
    record(SAMPLES);
    let second = rss().saturating_sub(middle);
    assert!(
        second < first / 2,
        "the second {SAMPLES} samples reused the first ones' memory only if the upkeep freed \
         it: the first grew the process by {first} bytes, the second by {second}"
    );
    // The samples were counted all the same.
    let text = handle.render();
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("mcp_server_operation_duration_seconds_count "))
        .expect("the histogram's count in the rendering");
    assert_eq!(count.trim(), (2 * SAMPLES).to_string());
}
