//! The gateway's own Prometheus metrics of the data plane (`mcp_gateway_*`): requests by
//! adapter, route and status, their duration, refusals, upstream errors and ejections. Labels
//! are bounded: methods outside [`KNOWN_METHODS`] count as `other`. (The MCP semantic
//! conventions' histograms are in [`crate::observe`].)

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::{Arc, RwLock};

use http::StatusCode;
use metrics::{Counter, Histogram};

use crate::jsonrpc::Envelope;

/// Metric handles, registered once per label set and kept, so a request records into its
/// counters and histograms without building labels and looking them up in the recorder's
/// registry (which hashes, compares and allocates the labels every time). Label values are
/// bounded by construction, and so is the cache.
pub(crate) struct Handles<T> {
    /// By foldhash of the label values (they come from the configuration and a bounded set,
    /// not from callers, so no keyed hash is needed against flooding).
    map: RwLock<HashMap<u64, Vec<Entry<T>>, foldhash::fast::RandomState>>,
    state: foldhash::fast::RandomState,
}

/// Label values and their handle; several per hash only on a collision.
type Entry<T> = (Box<[Box<str>]>, T);

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            state: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T> Handles<T> {
    /// `f` of the handles of the label values `key`, registered with `register` the first
    /// time. Borrowed, not cloned: a handle's clone increments a reference count that every
    /// thread's requests share, and each increment moves its cache line between cores.
    pub(crate) fn with<R>(
        &self,
        key: &[&str],
        register: impl FnOnce() -> T,
        f: impl FnOnce(&T) -> R,
    ) -> R {
        let hash = self.state.hash_one(key);
        let same =
            |k: &[Box<str>]| k.len() == key.len() && k.iter().zip(key).all(|(a, b)| **a == **b);
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some((_, t)) = map.get(&hash).and_then(|v| v.iter().find(|(k, _)| same(k))) {
                return f(t);
            }
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let slot = map.entry(hash).or_default();
        let at = match slot.iter().position(|(k, _)| same(k)) {
            Some(at) => at,
            None => {
                slot.push((key.iter().map(|s| Box::from(*s)).collect(), register()));
                slot.len() - 1
            }
        };
        f(&slot[at].1)
    }
}

/// The handles of the data plane's request metrics.
#[derive(Default)]
pub(crate) struct Meters {
    requests: Handles<(Counter, Histogram)>,
    mcp_requests: Handles<Counter>,
}

impl Meters {
    /// `mcp_gateway_requests_total` and `mcp_gateway_request_duration_seconds` of one request.
    pub(crate) fn request(
        &self,
        adapter: &Arc<str>,
        route: &'static str,
        status: StatusCode,
        secs: f64,
    ) {
        let key = [&**adapter, route, status.as_str()];
        let register = || {
            (
                metrics::counter!(
                    "mcp_gateway_requests_total",
                    "adapter" => adapter.clone(),
                    "route" => route,
                    "status" => status_label(status)
                ),
                metrics::histogram!(
                    "mcp_gateway_request_duration_seconds",
                    "adapter" => adapter.clone(),
                    "route" => route
                ),
            )
        };
        self.requests.with(&key, register, |(count, duration)| {
            count.increment(1);
            duration.record(secs);
        });
    }

    /// `mcp_gateway_mcp_requests_total` of one posted message.
    pub(crate) fn mcp_request(&self, adapter: &Arc<str>, env: Option<&Envelope>) {
        let method = method_label(env);
        let register = || {
            metrics::counter!(
                "mcp_gateway_mcp_requests_total",
                "adapter" => adapter.clone(),
                "method" => method
            )
        };
        self.mcp_requests
            .with(&[adapter, method], register, |count| count.increment(1));
    }
}

/// MCP methods counted by name in metrics; others count as `other`, so a client cannot
/// create label values.
pub(crate) const KNOWN_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The status as a label without allocating for the statuses a gateway answers with.
pub(crate) fn status_label(status: StatusCode) -> metrics::SharedString {
    let known = match status.as_u16() {
        200 => "200",
        202 => "202",
        204 => "204",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => return metrics::SharedString::from(status.as_str().to_owned()),
    };
    metrics::SharedString::const_str(known)
}

pub(crate) fn method_label(env: Option<&Envelope>) -> &'static str {
    match env.and_then(|e| e.method.as_deref()) {
        Some(m) => KNOWN_METHODS
            .iter()
            .find(|k| **k == m)
            .copied()
            .unwrap_or("other"),
        None if env.is_some_and(|e| e.batch) => "batch",
        None => "response",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(method: &str) -> Envelope {
        Envelope {
            method: Some(method.into()),
            ..Envelope::default()
        }
    }

    #[test]
    fn metric_labels_are_bounded() {
        assert_eq!(method_label(Some(&env("tools/call"))), "tools/call");
        assert_eq!(method_label(Some(&env("x/evil-unbounded"))), "other");
        assert_eq!(method_label(None), "response");
    }
}
