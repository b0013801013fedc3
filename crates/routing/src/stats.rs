//! The gateway's own Prometheus metrics of the data plane (`mcp_gateway_*`): requests by
//! adapter, route and status, their duration, refusals, upstream errors and ejections. Labels
//! are bounded: methods outside [`KNOWN_METHODS`] count as `other`. (The MCP semantic
//! conventions' histograms are in [`crate::observe`].)

use http::StatusCode;

use crate::jsonrpc::Envelope;

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
