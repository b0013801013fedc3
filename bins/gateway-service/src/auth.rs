//! Authentication in front of both planes: the bearer-token layer of `mcp-gateway-auth`, the
//! responses it refuses with (401/503 shaped for the plane the request was for), the OAuth
//! protected resource metadata of RFC 9728, and the admin key of the secure default.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use mcp_gateway_auth::{AuthError, AuthLayer, Authenticator, KeyFileConfig, Reject};
use mcp_gateway_routing::{Gateway, ProxyBody};

use crate::config::AuthSettings;

/// Where RFC 9728 metadata is served; the resource's path follows it.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The name of the admin key file in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// Builds the authenticator of the configuration, plus the admin key of the data directory:
/// created on first start when neither issuers nor keys are configured, and accepted while the
/// file exists (delete it to revoke it).
pub fn authenticator(
    settings: &AuthSettings,
    data_dir: &Path,
) -> anyhow::Result<Option<Authenticator>> {
    let Some(tokens) = &settings.tokens else {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): every caller is an anonymous admin"
        );
        return Ok(None);
    };
    let mut tokens = tokens.clone();
    // Created when nothing else lets anyone in; once there, accepted until deleted, so adding
    // a key for someone else does not lock the operator out.
    let nothing_configured = tokens.issuers.is_empty() && tokens.api_keys.is_empty();
    if nothing_configured || data_dir.join(ADMIN_KEY_FILE).exists() {
        // Created (or checked) now; read again on every use, so deleting the file revokes the
        // key at once.
        admin_key(data_dir)?;
        tokens.key_file = Some(KeyFileConfig {
            path: data_dir.join(ADMIN_KEY_FILE),
            subject: "admin".into(),
            roles: vec![settings.policy.admin_role.clone()],
        });
    }
    let auth = Authenticator::new(tokens).context("invalid [auth] configuration")?;
    Ok(Some(auth))
}

/// Reads `admin.key` from the data directory, or creates it (mode 0600) and prints it once.
/// A key file others may read is refused, as ssh refuses such private keys.
fn admin_key(data_dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = data_dir.join(ADMIN_KEY_FILE);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                anyhow::bail!(
                    "{} is readable by other users: run chmod 600 on it (or delete it to get a \
                     new key)",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let key = text.trim().to_owned();
            if key.is_empty() {
                anyhow::bail!("{} is empty: delete it to get a new key", path.display());
            }
            tracing::info!(path = %path.display(), "the admin API key stored there is accepted (delete the file to revoke it)");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            {
                use std::os::unix::fs::DirBuilderExt as _;
                // It will hold the admin key and the adapters' records: private.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(data_dir)
                    .with_context(|| {
                        format!("cannot create data directory {}", data_dir.display())
                    })?;
            }
            let key = mcp_gateway_auth::generate_api_key();
            // Written whole under a private name, then linked into place: a gateway starting
            // beside this one sees either no key or the complete one, never half of it.
            let unique = &mcp_gateway_auth::hash_api_key(&key)[..16];
            let tmp = data_dir.join(format!(".{ADMIN_KEY_FILE}.{unique}"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            writeln!(file, "{key}").with_context(|| format!("cannot write {}", tmp.display()))?;
            file.sync_all().ok();
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {}
                // Another gateway on this data directory made one first: use it.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return admin_key(data_dir);
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()));
                }
            }
            // Printed once, on the terminal of whoever started the gateway, not into logs.
            eprintln!(
                "\nNo [auth] issuers or api_keys are configured: created an admin API key.\n\
                 It is stored in {} (mode 0600) and shown only this once:\n\n    {key}\n\n\
                 Send it as: Authorization: Bearer <key>\n",
                path.display()
            );
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The refusals of the authentication layer, as the plane of the request expects them: a
/// JSON-RPC error body on MCP routes, problem+json on the API.
#[derive(Clone)]
pub struct Refusal {
    pub public_url: Option<Arc<str>>,
}

/// The authentication layer of the listener: refusals shaped per plane, and the protected
/// resource of each request (for resource-bound tokens). Built once at start.
pub fn layer(authenticator: Authenticator, public_url: Option<&str>) -> AuthLayer<Refusal> {
    let public_url: Option<Arc<str>> = public_url.map(Arc::from);
    let refusal = Refusal {
        public_url: public_url.clone(),
    };
    let resources: mcp_gateway_auth::Resources =
        Arc::new(move |parts| resources(public_url.as_deref(), parts.uri.path()));
    AuthLayer::new(authenticator, refusal).with_resources(resources)
}

/// `/.well-known/oauth-protected-resource`, alone or followed by a resource's path.
pub fn is_metadata_path(path: &str) -> bool {
    path.strip_prefix(METADATA_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

impl Reject<ProxyBody> for Refusal {
    fn reject(&self, req: &http::request::Parts, err: &AuthError) -> Response<ProxyBody> {
        let path = req.uri.path();
        let status = match err {
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        tracing::debug!(path, reason = err.reason(), error = %err, "request not authenticated");
        let detail = match err {
            AuthError::Missing => {
                "this gateway needs Authorization: Bearer <token> (a JWT of a configured issuer, \
                 or an API key)"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let mut res = if Gateway::handles_path(path) {
            mcp_gateway_routing::json_rpc_error(
                status,
                mcp_gateway_routing::INVALID_REQUEST,
                &detail,
                None,
            )
        } else {
            crate::problem(status, &detail)
        };
        if status == StatusCode::UNAUTHORIZED {
            let metadata = format!(
                "{}{METADATA_PATH}{}",
                base_url(self.public_url.as_deref(), &req.headers),
                resource_path(path)
            );
            let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
            match err {
                AuthError::Missing => {}
                AuthError::Malformed(_) => challenge.push_str(", error=\"invalid_request\""),
                other => {
                    let reason = other.to_string().replace(['"', '\\'], "'");
                    challenge.push_str(&format!(
                        ", error=\"invalid_token\", error_description=\"{reason}\""
                    ));
                }
            }
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                res.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        } else {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

/// The protected resource a path belongs to: an adapter's MCP endpoint (`/adapters/x/mcp`,
/// also for its `sse` and `messages` routes, which the same token opens), or the gateway itself
/// (the empty path) for the API.
fn resource_path(path: &str) -> String {
    match path
        .strip_prefix("/adapters/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((name, route)) if Gateway::handles_path(path) => match route.trim_end_matches('/') {
            "sse" => format!("/adapters/{name}/sse"),
            _ => format!("/adapters/{name}/mcp"),
        },
        _ => String::new(),
    }
}

/// The URLs of the protected resource a request is for, against which resource-bound tokens
/// (`aud` = the URL, RFC 8707) are checked: an adapter's `…/mcp` and `…/sse` (one MCP server,
/// either transport), from `public_url` only (never from the request's `Host`, which the client
/// chooses). None for the API and without `public_url`.
pub fn resources(public_url: Option<&str>, path: &str) -> Vec<String> {
    let (Some(base), Some((name, _))) = (
        public_url,
        path.strip_prefix("/adapters/")
            .and_then(|rest| rest.split_once('/'))
            .filter(|_| Gateway::handles_path(path)),
    ) else {
        return Vec::new();
    };
    vec![
        format!("{base}/adapters/{name}/mcp"),
        format!("{base}/adapters/{name}/sse"),
    ]
}

/// `public_url`, else `http://` and the request's `Host` when it is a plain `host[:port]` (it
/// was checked against `allowed_hosts`, which may allow any; anything else, such as quotes
/// that would end the `WWW-Authenticate` parameter, gives `localhost`).
fn base_url(public_url: Option<&str>, headers: &http::HeaderMap) -> String {
    if let Some(url) = public_url {
        return url.to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.parse::<http::uri::Authority>()
                .is_ok_and(|a| a.as_str() == *h && !h.contains('@'))
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// `GET /.well-known/oauth-protected-resource[/resource path]`: RFC 9728 metadata naming the
/// authorization servers whose tokens the gateway accepts.
pub fn metadata<B>(
    req: &Request<B>,
    auth: Option<&Authenticator>,
    settings: &AuthSettings,
) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut res = crate::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "protected resource metadata is read with GET",
        );
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    let rest = req
        .uri()
        .path()
        .strip_prefix(METADATA_PATH)
        .unwrap_or_default();
    if !rest.is_empty() && resource_path(rest) != rest {
        return crate::problem(
            StatusCode::NOT_FOUND,
            "no such protected resource: use /.well-known/oauth-protected-resource or \
             /.well-known/oauth-protected-resource/adapters/{name}/mcp",
        );
    }
    let base = base_url(settings.public_url.as_deref(), req.headers());
    let servers = auth
        .map(Authenticator::authorization_servers)
        .unwrap_or_default();
    let mut doc = serde_json::json!({
        "resource": format!("{base}{rest}"),
        "bearer_methods_supported": ["header"],
        "resource_name": if rest.is_empty() {
            "MCP gateway".to_owned()
        } else {
            format!("MCP server {}", rest.trim_start_matches("/adapters/").split('/').next().unwrap_or(""))
        },
    });
    // With API keys only there is no authorization server to send a client to.
    if !servers.is_empty() {
        doc["authorization_servers"] = serde_json::json!(servers);
    }
    mcp_gateway_routing::json_response(StatusCode::OK, "application/json", &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_urls_come_from_the_public_url_only() {
        let base = Some("https://mcp.example.com");
        assert_eq!(
            resources(base, "/adapters/gh/messages"),
            [
                "https://mcp.example.com/adapters/gh/mcp",
                "https://mcp.example.com/adapters/gh/sse"
            ]
        );
        assert!(resources(base, "/adapters/gh/status").is_empty());
        assert!(resources(None, "/adapters/gh/mcp").is_empty());
    }

    #[test]
    fn metadata_paths() {
        assert!(is_metadata_path(METADATA_PATH));
        assert!(is_metadata_path(&format!(
            "{METADATA_PATH}/adapters/gh/mcp"
        )));
        assert!(!is_metadata_path(&format!("{METADATA_PATH}-x")));
        assert!(!is_metadata_path("/adapters"));
    }

    #[test]
    fn resources_of_paths() {
        assert_eq!(resource_path("/adapters/gh/mcp"), "/adapters/gh/mcp");
        assert_eq!(resource_path("/adapters/gh/messages"), "/adapters/gh/mcp");
        assert_eq!(resource_path("/adapters/gh/sse"), "/adapters/gh/sse");
        assert_eq!(resource_path("/adapters/gh/status"), "");
        assert_eq!(resource_path("/adapters"), "");
    }

    #[test]
    fn hosts_that_are_not_authorities_are_not_echoed() {
        let mut h = http::HeaderMap::new();
        for (host, want) in [
            ("gw.example.com:8443", "http://gw.example.com:8443"),
            ("[::1]:80", "http://[::1]:80"),
            ("a\", error=\"x", "http://localhost"),
            ("user@evil", "http://localhost"),
        ] {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(base_url(None, &h), want, "{host}");
        }
        assert_eq!(
            base_url(Some("https://mcp.example.com"), &h),
            "https://mcp.example.com"
        );
    }

    #[test]
    fn admin_key_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = admin_key(dir.path()).unwrap();
        assert!(first.starts_with("mcpgw_"));
        let path = dir.path().join(ADMIN_KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(admin_key(dir.path()).unwrap(), first);
        // Gateways starting together on one data directory agree on one key.
        let racing = tempfile::tempdir().unwrap();
        let keys: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| admin_key(racing.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = admin_key(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
