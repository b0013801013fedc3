//! Upstream headers read from the gateway's secrets (environment variables or files).

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue};
use mcp_gateway_core::SecretRef;

/// Headers a secret may not set: they belong to the connection, the MCP session or the
/// caller's identity, which the gateway sets itself.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
];

/// Reads each secret and checks the header it becomes. Errors name the header and the secret,
/// never the value.
pub fn upstream_headers(
    headers: &BTreeMap<String, SecretRef>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    headers
        .iter()
        .map(|(name, secret)| {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("upstreamHeaders: {name:?} is not a valid header name"))?;
            if RESERVED.contains(&header.as_str()) {
                return Err(format!(
                    "upstreamHeaders: {name} is set by the gateway itself and cannot come from a \
                     secret"
                ));
            }
            let value = match secret {
                SecretRef::Env(var) => std::env::var(var).map_err(|_| {
                    format!(
                        "upstreamHeaders.{name}: environment variable {var} is not set (or not \
                         UTF-8) in the gateway's environment"
                    )
                })?,
                SecretRef::File(path) => std::fs::read_to_string(path)
                    .map_err(|e| format!("upstreamHeaders.{name}: cannot read {path}: {e}"))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            };
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                format!("upstreamHeaders.{name}: the secret holds characters a header cannot carry")
            })?;
            value.set_sensitive(true);
            Ok((header, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_and_refuses_reserved_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "Bearer s3cret\n").unwrap();
        let mut map = BTreeMap::new();
        map.insert(
            "Authorization".to_owned(),
            SecretRef::File(path.display().to_string()),
        );
        let got = upstream_headers(&map).unwrap();
        assert_eq!(got[0].0, "authorization");
        assert_eq!(got[0].1, "Bearer s3cret");
        assert!(got[0].1.is_sensitive());

        map.insert("Mcp-Session-Id".into(), SecretRef::Env("PATH".into()));
        assert!(
            upstream_headers(&map)
                .unwrap_err()
                .contains("set by the gateway")
        );
        map.remove("Mcp-Session-Id");
        map.insert(
            "X-Key".into(),
            SecretRef::Env("MCPGW_SURELY_UNSET_VAR".into()),
        );
        let err = upstream_headers(&map).unwrap_err();
        assert!(err.contains("MCPGW_SURELY_UNSET_VAR is not set"), "{err}");
        map.remove("X-Key");
        map.insert("X-Key".into(), SecretRef::File("/nonexistent/x".into()));
        assert!(upstream_headers(&map).unwrap_err().contains("cannot read"));
    }
}
