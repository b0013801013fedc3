//! Checks of an [`AdapterSpec`] that need no runtime: every problem is collected, so a client
//! fixes them all at once. Runtime-specific checks follow in
//! [`Provisioner::validate`](mcp_gateway_core::Provisioner::validate).

use mcp_gateway_core::AdapterSpec;

use crate::error::{ApiError, FieldError};

/// The most replicas an adapter may ask for.
pub const MAX_REPLICAS: u32 = 50;

/// Validates what the API itself knows about an adapter spec.
pub fn check_spec(spec: &AdapterSpec) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    let mut fail = |field: String, detail: String| errors.push(FieldError { field, detail });

    if !(1..=MAX_REPLICAS).contains(&spec.replica_count) {
        fail(
            "replicaCount".into(),
            format!(
                "replicaCount {} is out of range: must be between 1 and {MAX_REPLICAS}",
                spec.replica_count
            ),
        );
    }
    for (key, value) in &spec.environment_variables {
        if !is_env_name(key) {
            fail(
                format!("environmentVariables.{key}"),
                format!(
                    "environment variable name {key:?} is invalid: use letters, digits and '_', not starting with a digit"
                ),
            );
        }
        if value.contains('\0') {
            fail(
                format!("environmentVariables.{key}"),
                format!("environment variable {key:?} contains a NUL character"),
            );
        }
    }
    for (i, url) in spec.upstreams.iter().enumerate() {
        if let Err(why) = check_upstream(url) {
            fail(format!("upstreams[{i}]"), why);
        }
    }
    if let Some(path) = &spec.path
        && let Err(why) = check_path(path)
    {
        fail("path".into(), why);
    }
    if spec.port == Some(0) {
        fail(
            "port".into(),
            "port 0 is invalid: give the port the server listens on (1-65535)".into(),
        );
    }
    if let Some(command) = &spec.command {
        if command.trim().is_empty() {
            fail(
                "command".into(),
                "command is empty: give the program to run, or leave it out".into(),
            );
        } else if command.contains('\0') {
            fail("command".into(), "command contains a NUL character".into());
        }
    }
    for (i, arg) in spec.args.iter().enumerate() {
        if arg.contains('\0') {
            fail(
                format!("args[{i}]"),
                format!("argument {i} contains a NUL character"),
            );
        }
    }
    for (i, role) in spec.required_roles.iter().enumerate() {
        if role.trim().is_empty() {
            fail(
                format!("requiredRoles[{i}]"),
                "role names must not be empty".into(),
            );
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::fields("invalid-adapter", errors))
    }
}

/// A POSIX-style environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// An upstream is `http://host[:port]` with no path, query or credentials: the adapter's
/// `path` is appended (as in the static configuration of `gateway-service`).
fn check_upstream(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("upstream {url:?} is not a URL; write it as http://host:port"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "upstream {url:?} must start with http:// (TLS to upstreams is not supported yet)"
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!(
            "upstream {url:?} has no host; write it as http://host:port"
        ));
    };
    if authority.host().is_empty() {
        return Err(format!(
            "upstream {url:?} has no host; write it as http://host:port"
        ));
    }
    if let Some(ip) = authority
        .host()
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        && ip.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Err(format!("upstream {url:?} has an invalid IPv6 address"));
    }
    if let Some((_, port)) = authority.as_str().rsplit_once(':')
        && !port.contains(']')
        && !matches!(port.parse::<u16>(), Ok(1..))
    {
        return Err(format!("upstream {url:?} has an invalid port (1-65535)"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("upstream {url:?} must not contain credentials"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "upstream {url:?} must have no path or query; set the adapter's `path` instead"
        ));
    }
    Ok(())
}

/// The MCP endpoint path: `/` then visible ASCII other than `?` and `#` (the OpenAPI pattern
/// `^/[!-"$->@-~]*$`).
fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!(
            "path {path:?} must start with '/' (for example \"/mcp\")"
        ));
    }
    if !path
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'?' && b != b'#')
    {
        return Err(format!(
            "path {path:?} must be a plain URL path: visible ASCII, no query, fragment or spaces (percent-encode other characters)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> AdapterSpec {
        serde_json::from_str(json).unwrap()
    }

    fn fields(json: &str) -> Vec<String> {
        match check_spec(&spec(json)) {
            Ok(()) => Vec::new(),
            Err(ApiError::Invalid { errors, .. }) => errors.into_iter().map(|e| e.field).collect(),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_plain_spec_passes() {
        assert!(
            fields(r#"{"name":"a","command":"srv","args":["--port","{port}"],"path":"/mcp"}"#)
                .is_empty()
        );
        assert!(fields(r#"{"name":"a","upstreams":["http://127.0.0.1:9001","http://h:1/","http://[::1]:8080"],"replicaCount":2}"#).is_empty());
        assert!(
            fields(
                r#"{"name":"a","replicaCount":50,"environmentVariables":{"_A1":"x","PATH":""}}"#
            )
            .is_empty()
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let got = fields(
            r#"{"name":"a","replicaCount":0,"environmentVariables":{"1X":"y","OK":"a\u0000"},
                "upstreams":["https://h:1","http://h:1/mcp","nope","http://u:p@h:1","http://[a.b:c]:1","http://h:99999","http://h:0"],"path":"mcp","port":0,
                "command":" ","requiredRoles":[""]}"#,
        );
        assert_eq!(
            got,
            [
                "replicaCount",
                "environmentVariables.1X",
                "environmentVariables.OK",
                "upstreams[0]",
                "upstreams[1]",
                "upstreams[2]",
                "upstreams[3]",
                "upstreams[4]",
                "upstreams[5]",
                "upstreams[6]",
                "path",
                "port",
                "command",
                "requiredRoles[0]",
            ]
        );
        assert_eq!(
            fields(r#"{"name":"a","replicaCount":51}"#),
            ["replicaCount"]
        );
        assert_eq!(fields(r#"{"name":"a","path":"/m cp"}"#), ["path"]);
        assert_eq!(
            fields(r#"{"name":"a","environmentVariables":{"A-B":"x"}}"#),
            ["environmentVariables.A-B"]
        );
    }
}
