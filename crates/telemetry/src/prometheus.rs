//! The process-wide metrics recorder behind `/metrics`.
//!
//! Counters and gauges are kept by `metrics-exporter-prometheus`. Histograms are kept here, in
//! fixed buckets: recording a sample finds its bucket and adds one to it (two relaxed atomic
//! additions and a compare-and-swap for the sum), and nothing else. The exporter's histograms
//! instead keep every sample, with the time it was taken, until an upkeep folds them into
//! buckets: a clock reading and a queue push per sample (three per proxied request), a queue
//! that grows without bound when no upkeep runs, and a thread to run it.
//!
//! The rendering is the exporter's text format: `# HELP` and `# TYPE` lines, then each label
//! set's cumulative `_bucket` lines (`le` boundaries, then `+Inf`), `_sum` and `_count`, in
//! the order of the metric's name and its labels.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mcp_gateway_routing::observe;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::formatting::{
    sanitize_label_key, sanitize_label_value, sanitize_metric_name, write_help_line,
    write_type_line,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Buckets of every other `*_seconds` histogram (`mcp_gateway_request_duration_seconds`):
/// 100 µs to 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// The boundaries of a histogram: the MCP semantic conventions' for their three, else
/// [`SECONDS_BUCKETS`] (every histogram the gateway's crates record is in seconds).
fn bounds_for(name: &str) -> &'static [f64] {
    if [
        observe::SERVER_OPERATION_DURATION,
        observe::CLIENT_OPERATION_DURATION,
        observe::SERVER_SESSION_DURATION,
    ]
    .contains(&name)
    {
        observe::DURATION_BUCKETS
    } else {
        SECONDS_BUCKETS
    }
}

/// One histogram (a name and a label set): its samples counted per bucket, not kept.
#[derive(Debug)]
struct Bucketed {
    bounds: &'static [f64],
    /// Samples per bucket, not cumulative: `counts[i]` holds those in
    /// `(bounds[i - 1], bounds[i]]`, the last those above every bound (and NaN).
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl Bucketed {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }
}

impl HistogramFn for Bucketed {
    fn record(&self, value: f64) {
        // The first bound not below the value: Prometheus's buckets are `le` (≤).
        let at = if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|&bound| bound < value)
        };
        if let Some(count) = self.counts.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// Every histogram registered, and the descriptions given for them.
#[derive(Debug, Default)]
struct Histograms {
    by_key: Mutex<HashMap<Key, Arc<Bucketed>>>,
    descriptions: Mutex<HashMap<String, SharedString>>,
}

impl Histograms {
    fn handle(&self, key: &Key) -> Arc<Bucketed> {
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = by_key.get(key) {
            return Arc::clone(found);
        }
        let made = Arc::new(Bucketed::new(bounds_for(key.name())));
        by_key.insert(key.clone(), Arc::clone(&made));
        made
    }

    fn render_into(&self, out: &mut String) {
        let mut all: Vec<(String, Vec<String>, Arc<Bucketed>)> = self
            .by_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, histogram)| {
                let labels = key
                    .labels()
                    .map(|l| {
                        format!(
                            "{}=\"{}\"",
                            sanitize_label_key(l.key()),
                            sanitize_label_value(l.value())
                        )
                    })
                    .collect();
                (
                    sanitize_metric_name(key.name()),
                    labels,
                    Arc::clone(histogram),
                )
            })
            .collect();
        all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let descriptions = self
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut family: Option<&str> = None;
        for (name, labels, histogram) in &all {
            if family != Some(name.as_str()) {
                if family.is_some() {
                    out.push('\n');
                }
                if let Some(description) = descriptions.get(name) {
                    write_help_line(out, name, None, None, description);
                }
                write_type_line(out, name, None, None, "histogram");
                family = Some(name);
            }
            let labels = labels.join(",");
            let sep = if labels.is_empty() { "" } else { "," };
            let mut cumulative = 0u64;
            for (at, count) in histogram.counts.iter().enumerate() {
                cumulative += count.load(Ordering::Relaxed);
                match histogram.bounds.get(at) {
                    Some(le) => {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
                        );
                    }
                }
            }
            let sum = f64::from_bits(histogram.sum.load(Ordering::Relaxed));
            let braced = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            let _ = writeln!(out, "{name}_sum{braced} {sum}");
            let _ = writeln!(out, "{name}_count{braced} {cumulative}");
        }
        if family.is_some() {
            out.push('\n');
        }
    }
}

/// The recorder [`metrics`](crate::metrics) installs: counters and gauges through the exporter,
/// histograms in fixed buckets.
struct GatewayRecorder {
    exporter: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

impl Recorder for GatewayRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        // Units are not added to names (as the exporter does by default): ours carry them.
        self.histograms
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sanitize_metric_name(key.as_str()), description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.exporter.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.exporter.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.handle(key))
    }
}

/// Renders what the process-wide recorder holds, in Prometheus's text format (`/metrics`).
#[derive(Clone)]
pub struct MetricsHandle {
    exporter: PrometheusHandle,
    histograms: Arc<Histograms>,
}

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").finish_non_exhaustive()
    }
}

impl MetricsHandle {
    pub fn render(&self) -> String {
        let mut text = self.exporter.render();
        self.histograms.render_into(&mut text);
        text
    }
}

/// Makes the recorder and its handle (not installed).
pub(crate) fn recorder() -> (impl Recorder + Sync + Send + 'static, MetricsHandle) {
    let exporter = PrometheusBuilder::new().build_recorder();
    let histograms = Arc::new(Histograms::default());
    let handle = MetricsHandle {
        exporter: exporter.handle(),
        histograms: Arc::clone(&histograms),
    };
    (
        GatewayRecorder {
            exporter,
            histograms,
        },
        handle,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_fall_in_le_buckets_and_render_cumulatively() {
        let (recorder, handle) = recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_histogram!("demo_seconds", "A \"demo\".\nTwo lines.");
            let h = metrics::histogram!("demo_seconds", "adapter" => "a\"b", "route" => "mcp");
            // On a bound (≤ counts), between bounds, above them all.
            for v in [0.0001, 0.0001, 0.0003, 0.001, 100.0] {
                h.record(v);
            }
            metrics::histogram!("demo_seconds").record(f64::NAN);
            metrics::counter!("demo_total").increment(2);
        });
        let text = handle.render();
        assert!(text.contains("demo_total 2\n"), "{text}");
        assert!(
            text.contains(
                "# HELP demo_seconds A \"demo\".\\nTwo lines.\n# TYPE demo_seconds histogram\n"
            ),
            "{text}"
        );
        let labelled = |le: &str| {
            format!("demo_seconds_bucket{{adapter=\"a\\\"b\",route=\"mcp\",le=\"{le}\"}} ")
        };
        for (le, count) in [
            ("0.0001", 2),
            ("0.00025", 2),
            ("0.0005", 3),
            ("0.001", 4),
            ("60", 4),
            ("+Inf", 5),
        ] {
            assert!(
                text.contains(&format!("{}{count}\n", labelled(le))),
                "{le}: {text}"
            );
        }
        assert!(
            text.contains("demo_seconds_count{adapter=\"a\\\"b\",route=\"mcp\"} 5\n"),
            "{text}"
        );
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("demo_seconds_sum{adapter=\"a\\\"b\",route=\"mcp\"} "))
            .and_then(|v| v.parse().ok())
            .expect("the sum line");
        assert!((sum - 100.0015).abs() < 1e-9, "{sum}");
        // The unlabelled set sorts first; NaN counts above every bound.
        assert!(
            text.contains("demo_seconds_bucket{le=\"60\"} 0\ndemo_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("demo_seconds_count 1\n"), "{text}");
        let unlabelled = text.find("demo_seconds_count 1").unwrap_or(usize::MAX);
        let labelled = text.find("demo_seconds_count{").unwrap_or(0);
        assert!(unlabelled < labelled, "{text}");
    }

    #[test]
    fn the_conventions_histograms_use_their_boundaries() {
        let (recorder, handle) = recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(observe::SERVER_OPERATION_DURATION).record(0.015);
        });
        let text = handle.render();
        let name = observe::SERVER_OPERATION_DURATION;
        assert!(
            text.contains(&format!(
                "{name}_bucket{{le=\"0.01\"}} 0\n{name}_bucket{{le=\"0.02\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "{name}_bucket{{le=\"300\"}} 1\n{name}_bucket{{le=\"+Inf\"}} 1\n"
            )),
            "{text}"
        );
    }
}
