//! Histogram samples are counted, not kept: recording millions of them, with nobody scraping,
//! leaves the process's memory where it was. (The exporter's histograms kept every sample until
//! an upkeep: two million of them held ~48 MB.) Its own test binary, so that its process holds
//! nothing else that allocates meanwhile.

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

#[test]
fn histogram_samples_are_not_kept() {
    let handle = mcp_gateway_telemetry::metrics().expect("installing the recorder");
    const SAMPLES: usize = 4_000_000;
    let histogram = metrics::histogram!("mcp_server_operation_duration_seconds");
    histogram.record(0.0);
    let before = rss();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for i in 0..SAMPLES / 2 {
                    histogram.record((i % 1000) as f64 / 1000.0);
                }
            });
        }
    });
    let grew = rss().saturating_sub(before);
    assert!(
        grew < 4 << 20,
        "{SAMPLES} samples grew the process by {grew} bytes: they are kept"
    );
    // Every sample was counted, from both threads, in its bucket.
    let text = handle.render();
    let line = |prefix: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
    };
    let name = "mcp_server_operation_duration_seconds";
    assert_eq!(line(&format!("{name}_count ")), SAMPLES as u64 + 1);
    // Values 0.000 to 0.999, each 4 000 times (and the one 0.0): 11 of each thousand are
    // ≤ 0.01, 501 are ≤ 0.5.
    assert_eq!(
        line(&format!("{name}_bucket{{le=\"0.01\"}} ")),
        11 * 4000 + 1
    );
    assert_eq!(
        line(&format!("{name}_bucket{{le=\"0.5\"}} ")),
        501 * 4000 + 1
    );
    assert_eq!(
        line(&format!("{name}_bucket{{le=\"+Inf\"}} ")),
        SAMPLES as u64 + 1
    );
}
