//! What the local runtime checks of a spec before anything is stored or started.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use mcp_gateway_core::{AdapterError, AdapterSpec, Transport};

/// Most replicas an adapter may ask for.
pub const MAX_REPLICAS: u32 = 50;

pub(crate) fn validate(spec: &AdapterSpec) -> Result<(), AdapterError> {
    let invalid = |msg: String| Err(AdapterError::Invalid(msg));
    if !(1..=MAX_REPLICAS).contains(&spec.replica_count) {
        return invalid(format!(
            "replicaCount must be between 1 and {MAX_REPLICAS}, not {}",
            spec.replica_count
        ));
    }
    if let Some(path) = &spec.path
        && (!path.starts_with('/') || path.contains(['?', '#', ' ']))
    {
        return invalid(format!(
            "path must be an absolute URL path such as /mcp, not {path:?}"
        ));
    }
    match (&spec.command, spec.upstreams.is_empty()) {
        (Some(_), false) => {
            return invalid(
                "set either command (run the server here) or upstreams (front servers running \
                 elsewhere), not both"
                    .into(),
            );
        }
        (None, true) if spec.image_name.is_some() => {
            return invalid(
                "the local runtime runs commands, not images: set command, or use the Kubernetes \
                 runtime"
                    .into(),
            );
        }
        (None, true) if spec.transport == Transport::Stdio => {
            return invalid("a stdio adapter needs command: the program to run".into());
        }
        (None, true) => {
            return invalid(
                "set command (a program to run, e.g. \"npx\") or upstreams (base URLs of servers \
                 running elsewhere, e.g. \"http://127.0.0.1:9001\")"
                    .into(),
            );
        }
        (None, false) => {
            if spec.transport == Transport::Stdio {
                return invalid(
                    "a stdio adapter runs a command; upstreams are for HTTP servers".into(),
                );
            }
            if spec.upstreams.len() > MAX_REPLICAS as usize {
                return invalid(format!("at most {MAX_REPLICAS} upstreams"));
            }
            for url in &spec.upstreams {
                check_upstream(url).map_err(AdapterError::Invalid)?;
            }
        }
        (Some(command), true) => {
            check_env(spec)?;
            if let Some(arg) = spec.args.iter().find(|a| a.contains('\0')) {
                return invalid(format!("argument {arg:?} contains a NUL byte"));
            }
            let path_var = spec
                .environment_variables
                .get("PATH")
                .map(OsString::from)
                .or_else(|| std::env::var_os("PATH"));
            find_program(command, path_var.as_deref()).map_err(AdapterError::Invalid)?;
        }
    }
    if spec.transport == Transport::Stdio && !spec.upstream_headers.is_empty() {
        return invalid(
            "upstreamHeaders are sent to HTTP servers; a stdio adapter has none (pass secrets \
             to it as environmentVariables)"
                .into(),
        );
    }
    crate::secrets::upstream_headers(&spec.upstream_headers).map_err(AdapterError::Invalid)?;
    Ok(())
}

fn check_env(spec: &AdapterSpec) -> Result<(), AdapterError> {
    for (key, value) in &spec.environment_variables {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(AdapterError::Invalid(format!(
                "environment variable name {key:?} must be non-empty and contain no '=' or NUL"
            )));
        }
        if value.contains('\0') {
            return Err(AdapterError::Invalid(format!(
                "environment variable {key} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

/// `http://host:port`, nothing more.
fn check_upstream(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("upstream {url:?} {why}"));
    let Ok(uri) = url.parse::<http::Uri>() else {
        return bad("is not a URL; expected http://host:port");
    };
    if uri.scheme_str() != Some("http") {
        return bad("must start with http:// (the gateway reaches replicas over plain HTTP)");
    }
    let Some(authority) = uri.authority() else {
        return bad("has no host; expected http://host:port");
    };
    if authority.port_u16().is_none() || authority.host().is_empty() {
        return bad("needs a host and a port, e.g. http://127.0.0.1:9001");
    }
    if authority.as_str().contains('@') {
        return bad("must not carry credentials");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad("must have no path or query: set the MCP endpoint with path");
    }
    Ok(())
}

/// Where `command` is: an existing file if it names a path, else the first executable of that
/// name on `path_var`.
pub(crate) fn find_program(
    command: &str,
    path_var: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    if command.trim().is_empty() || command.contains('\0') {
        return Err("command must name a program".into());
    }
    if command.contains('/') {
        let path = Path::new(command);
        return if is_executable(path) {
            Ok(path.to_owned())
        } else if path.exists() {
            Err(format!("command {command:?} is not an executable file"))
        } else {
            Err(format!("command {command:?} does not exist"))
        };
    }
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            format!(
                "command {command:?} was not found on the gateway's PATH: install it, or give its \
                 full path"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> AdapterSpec {
        serde_json::from_value(json).unwrap()
    }

    fn refused(json: serde_json::Value) -> String {
        match validate(&spec(json)) {
            Err(AdapterError::Invalid(msg)) => msg,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn commands_on_path_and_existing_paths_are_accepted() {
        validate(&spec(serde_json::json!({"name": "a", "command": "sh"}))).unwrap();
        validate(&spec(
            serde_json::json!({"name": "a", "command": "/bin/sh", "replicaCount": 50}),
        ))
        .unwrap();
        validate(&spec(
            serde_json::json!({"name": "a", "command": "sh", "transport": "stdio"}),
        ))
        .unwrap();
    }

    #[test]
    fn a_missing_command_is_refused_with_what_to_do() {
        let msg = refused(serde_json::json!({"name": "a", "command": "no-such-program-xyz"}));
        assert!(msg.contains("not found on the gateway's PATH"), "{msg}");
        let msg = refused(serde_json::json!({"name": "a", "command": "/no/such/file"}));
        assert!(msg.contains("does not exist"), "{msg}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let plain = file.path().to_str().unwrap();
        let msg = refused(serde_json::json!({"name": "a", "command": plain}));
        assert!(msg.contains("not an executable"), "{msg}");
    }

    #[test]
    fn images_without_a_command_point_to_the_kubernetes_runtime() {
        let msg = refused(serde_json::json!({"name": "a", "imageName": "ghcr.io/x/y"}));
        assert_eq!(
            msg,
            "the local runtime runs commands, not images: set command, or use the Kubernetes runtime"
        );
        let msg = refused(serde_json::json!({"name": "a"}));
        assert!(msg.contains("set command"), "{msg}");
    }

    #[test]
    fn replica_counts_outside_one_to_fifty_are_refused() {
        for n in [0, 51] {
            let msg = refused(serde_json::json!({"name": "a", "command": "sh", "replicaCount": n}));
            assert!(msg.contains("between 1 and 50"), "{msg}");
        }
    }

    #[test]
    fn upstreams_must_be_bare_http_urls_and_exclude_command() {
        validate(&spec(serde_json::json!({"name": "a",
            "upstreams": ["http://127.0.0.1:9001", "http://localhost:9002/"]})))
        .unwrap();
        for url in [
            "https://h:1",
            "http://h",
            "http://h:1/mcp",
            "http://h:1?x=1",
            "h:1",
            "http://u:p@h:1",
        ] {
            let msg = refused(serde_json::json!({"name": "a", "upstreams": [url]}));
            assert!(msg.contains(url), "{msg}");
        }
        let msg =
            refused(serde_json::json!({"name": "a", "command": "sh", "upstreams": ["http://h:1"]}));
        assert!(msg.contains("not both"), "{msg}");
        let msg = refused(
            serde_json::json!({"name": "a", "transport": "stdio", "upstreams": ["http://h:1"]}),
        );
        assert!(msg.contains("stdio"), "{msg}");
    }

    #[test]
    fn bad_paths_and_environment_names_are_refused() {
        let msg = refused(serde_json::json!({"name": "a", "command": "sh", "path": "mcp"}));
        assert!(msg.contains("path"), "{msg}");
        let msg = refused(
            serde_json::json!({"name": "a", "command": "sh", "environmentVariables": {"A=B": "c"}}),
        );
        assert!(msg.contains("A=B"), "{msg}");
    }
}
