//! Header handling: what crosses the proxy (end-to-end headers, MCP headers), what does not
//! (hop-by-hop headers), and the DNS-rebinding checks of `Host` and `Origin`.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::RoutingConfig;
use crate::error::ProxyError;
use crate::wire::{header_line, header_start, list};

pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The default names of the identity headers ([`crate::IdentityHeaders`]), dropped from
/// every client request whatever names are configured.
pub(crate) const DEFAULT_USER_ID: HeaderName = HeaderName::from_static("x-mcp-userid");
pub(crate) const DEFAULT_ROLES: HeaderName = HeaderName::from_static("x-mcp-roles");

/// The first revision of the stateless era: requests that announce it (or a later one) in
/// `MCP-Protocol-Version` carry no session.
pub const STATELESS_REVISION: &str = "2026-07-28";

/// The hop-by-hop headers every proxy removes, whatever `Connection` names.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
}

/// The headers `Connection` names, hop-by-hop too (no allocation when there are none).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| list(v.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect()
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the names instead of nine removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The headers a replica gets for a client's request, written straight into the request's
/// head from the client's (no copy of the client's header map is made):
/// - No hop-by-hop headers (nor those `Connection` names), no `Host` (the gateway sends the
///   replica's) and no framing headers (the gateway frames the body itself).
/// - `X-Forwarded-Host` (the client's `Host`), `X-Forwarded-For` (the client's first value, then
///   the client's address) and `X-Forwarded-Proto` describe the original request.
/// - What the replica learns of the caller: never the client's credentials (`Authorization` is
///   the gateway's, and identity headers a client made up are dropped, under the configured
///   names and the default ones); the adapter's own upstream headers; then the authenticated
///   principal's subject and roles, each value percent-encoded where it holds `%`, `,` or
///   characters a header cannot carry (so a role named `a,mcp.admin` cannot pass for two).
/// - Last, `extra` (the trace context of the gateway's span), which replaces the client's.
///
/// A header the gateway writes replaces every client header of that name.
pub(crate) struct Forward<'a> {
    pub headers: &'a HeaderMap,
    pub client: Option<SocketAddr>,
    pub names: Option<&'a crate::IdentityHeaders>,
    pub principal: Option<&'a mcp_gateway_core::Principal>,
    /// The adapter's upstream headers (of a name given twice, the last).
    pub upstream: &'a [(HeaderName, HeaderValue)],
    pub extra: &'a HeaderMap,
}

impl crate::h1::WriteHeaders for Forward<'_> {
    fn write_headers(&self, out: &mut Vec<u8>) {
        let headers = self.headers;
        // The values the replaced headers depend on, from one pass over the names rather than
        // a lookup each.
        let (mut host, mut forwarded_for, mut connection) = (None, None, false);
        for (name, value) in headers {
            if name == header::HOST {
                host = host.or(Some(value));
            } else if name == X_FORWARDED_FOR {
                forwarded_for = forwarded_for.or(Some(value));
            } else if name == header::CONNECTION {
                connection = true;
            }
        }
        let named = if connection {
            connection_named(headers)
        } else {
            Vec::new()
        };
        let identity = self.names.zip(self.principal);
        let replaced = |name: &HeaderName| {
            is_hop_by_hop(name)
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || name == header::AUTHORIZATION
                || name == DEFAULT_USER_ID
                || name == DEFAULT_ROLES
                || name == X_FORWARDED_PROTO
                || (name == X_FORWARDED_FOR && self.client.is_some())
                || (name == X_FORWARDED_HOST && host.is_some())
                || self
                    .names
                    .is_some_and(|n| *name == n.user_id || *name == n.roles)
                || self.upstream.iter().any(|(n, _)| n == name)
                || self.extra.contains_key(name)
                || named.contains(name)
        };
        for (name, value) in headers {
            if !replaced(name) {
                header_line(out, name.as_str(), value.as_bytes());
            }
        }
        if let Some(host) = host {
            header_line(out, X_FORWARDED_HOST.as_str(), host.as_bytes());
        }
        // The values built here are written in place, not gathered in a `String` first.
        if let Some(addr) = self.client {
            header_start(out, X_FORWARDED_FOR.as_str());
            if let Some(prev) = forwarded_for.and_then(|v| v.to_str().ok()) {
                out.extend_from_slice(prev.as_bytes());
                out.extend_from_slice(b", ");
            }
            push_ip(out, addr.ip());
            out.extend_from_slice(b"\r\n");
        }
        header_line(out, X_FORWARDED_PROTO.as_str(), b"http");
        for (i, (name, value)) in self.upstream.iter().enumerate() {
            let later = self.upstream[i + 1..].iter().any(|(n, _)| n == name);
            let identity_name =
                identity.is_some_and(|(n, _)| *name == n.user_id || *name == n.roles);
            if !later && !identity_name {
                header_line(out, name.as_str(), value.as_bytes());
            }
        }
        if let Some((names, p)) = identity {
            header_start(out, names.user_id.as_str());
            push_identity_value(out, &p.subject);
            out.extend_from_slice(b"\r\n");
            header_start(out, names.roles.as_str());
            for (i, role) in p.roles.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_identity_value(out, role);
            }
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in self.extra {
            header_line(out, name.as_str(), value.as_bytes());
        }
    }
}

/// Appends `ip` as text; an IPv4 address digit by digit (the formatting machinery of
/// `Display` costs more than the rest of the forwarded headers).
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    let std::net::IpAddr::V4(v4) = ip else {
        use std::io::Write as _;
        let _ = write!(out, "{ip}");
        return;
    };
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Appends `value` with `%`, `,` and every byte outside visible ASCII and space
/// percent-encoded.
fn push_identity_value(out: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let plain = |b: u8| (b == b' ' || b.is_ascii_graphic()) && b != b'%' && b != b',';
    let mut rest = value.as_bytes();
    // Runs of plain bytes (usually the whole value) are copied at once.
    while let Some(n) = rest.iter().position(|&b| !plain(b)) {
        let b = rest[n];
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        rest = &rest[n + 1..];
    }
    out.extend_from_slice(rest);
}

/// The request headers routing reads, found in one pass over the map instead of a lookup
/// each (a lookup hashes the name and probes the table: ~140 instructions, and a request
/// needs seven). The first value of a name counts, as with [`HeaderMap::get`].
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Total bytes of header names and values.
    pub(crate) size: usize,
    pub(crate) host: Option<HeaderValue>,
    pub(crate) origin: Option<HeaderValue>,
    pub(crate) content_length: Option<HeaderValue>,
    pub(crate) session_id: Option<HeaderValue>,
    pub(crate) mcp_method: Option<HeaderValue>,
    pub(crate) mcp_name: Option<HeaderValue>,
}

impl Seen {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut seen = Seen::default();
        for (name, value) in headers {
            let name = name.as_str();
            seen.size += name.len() + value.len();
            let slot = match name {
                "host" => &mut seen.host,
                "origin" => &mut seen.origin,
                "content-length" => &mut seen.content_length,
                "mcp-session-id" => &mut seen.session_id,
                "mcp-method" => &mut seen.mcp_method,
                "mcp-name" => &mut seen.mcp_name,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.clone());
            }
        }
        seen
    }
}

/// Whether the request announces the stateless era (2026-07-28 or later).
pub fn is_stateless(headers: &HeaderMap) -> bool {
    headers
        .get(&MCP_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        // Revisions are ISO dates, so they order as strings.
        .is_some_and(|v| v.len() == STATELESS_REVISION.len() && v >= STATELESS_REVISION)
}

/// Splits `host[:port]` (also `[v6]:port`) and returns the host part (compared without case).
fn host_part(authority: &str) -> &str {
    // Header values reach here as visible ASCII: bytes, not chars, are looked at.
    let a = authority.trim_ascii();
    if a.starts_with('[') {
        // `[v6]` or `[v6]:port`, nothing else after the bracket.
        match a.find(']') {
            Some(i)
                if a[i + 1..].is_empty()
                    || a[i + 1..]
                        .strip_prefix(':')
                        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                &a[..=i]
            }
            _ => a,
        }
    } else {
        match a.bytes().rposition(|b| b == b':') {
            Some(i) if a.as_bytes()[i + 1..].iter().all(u8::is_ascii_digit) => &a[..i],
            _ => a,
        }
    }
}

/// A loopback IP literal (`127.0.0.0/8`, `[::1]`), or `localhost` and its subdomains, which
/// RFC 6761 reserves for loopback. Not a name that merely starts like one
/// (`127.0.0.1.attacker.example` is the attacker's host).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    const SUFFIX: &str = ".localhost";
    let n = host.len();
    if host.eq_ignore_ascii_case("localhost")
        || (n > SUFFIX.len()
            && host.is_char_boundary(n - SUFFIX.len())
            && host[n - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX))
    {
        return true;
    }
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    literal
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// DNS-rebinding protection (MCP transport spec, "Security Warning"): the `Host` must be one
/// the gateway is known by, and a browser's `Origin` one it trusts.
pub fn check_host_and_origin(
    headers: &HeaderMap,
    config: &RoutingConfig,
) -> Result<(), ProxyError> {
    check_host_and_origin_of(
        headers.get(header::HOST),
        headers.get(header::ORIGIN),
        config,
    )
}

/// [`check_host_and_origin`] of the two headers' (first) values.
pub(crate) fn check_host_and_origin_of(
    host: Option<&HeaderValue>,
    origin: Option<&HeaderValue>,
    config: &RoutingConfig,
) -> Result<(), ProxyError> {
    let host = host.and_then(|v| v.to_str().ok()).unwrap_or("");
    if !config.allowed_hosts.is_empty() {
        let h = host_part(host);
        let ok = config.allowed_hosts.iter().any(|allowed| {
            allowed == "*" || allowed.eq_ignore_ascii_case(h) || allowed.eq_ignore_ascii_case(host)
        });
        if !ok {
            return Err(ProxyError::HostNotAllowed(host.chars().take(100).collect()));
        }
    }
    let Some(origin) = origin else {
        return Ok(());
    };
    let origin_str = origin.to_str().unwrap_or("");
    let allowed = config
        .allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin_str.trim_end_matches('/')));
    // A page served from a loopback origin talking to a gateway reached on loopback is the
    // local-tools case (MCP Inspector); a remote page cannot reach a loopback Host unless DNS
    // rebinding is at play, which the Host check above stops.
    let origin_host = origin_str
        .split_once("://")
        .map(|(_, rest)| host_part(rest.split('/').next().unwrap_or("")));
    let loopback = origin_host.is_some_and(is_loopback_host) && is_loopback_host(host_part(host));
    if allowed || loopback {
        Ok(())
    } else {
        Err(ProxyError::OriginNotAllowed(
            origin_str.chars().take(100).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::WriteHeaders;

    static NO_HEADERS: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

    fn plain(headers: &HeaderMap) -> Forward<'_> {
        Forward {
            headers,
            client: None,
            names: None,
            principal: None,
            upstream: &[],
            extra: &NO_HEADERS,
        }
    }

    /// The header lines `forward` writes, read back as a map.
    fn written(forward: &Forward<'_>) -> HeaderMap {
        let mut out = Vec::new();
        forward.write_headers(&mut out);
        let text = String::from_utf8(out).unwrap();
        let mut h = HeaderMap::new();
        for line in text.split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    #[test]
    fn one_pass_finds_what_lookups_find() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, HeaderValue::from_static("gw.example:8080"));
        h.append("mcp-session-id", HeaderValue::from_static("first"));
        h.append("mcp-session-id", HeaderValue::from_static("second"));
        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        h.append("mcp-method", HeaderValue::from_static("tools/call"));
        h.append("x-other", HeaderValue::from_static("mcp-name"));
        let seen = Seen::of(&h);
        for (found, name) in [
            (&seen.host, "host"),
            (&seen.origin, "origin"),
            (&seen.content_length, "content-length"),
            (&seen.session_id, "mcp-session-id"),
            (&seen.mcp_method, "mcp-method"),
            (&seen.mcp_name, "mcp-name"),
        ] {
            assert_eq!(found.as_ref(), h.get(name), "{name}");
        }
        let size: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
        assert_eq!(seen.size, size);
        assert_eq!(Seen::of(&HeaderMap::new()).size, 0);
    }

    #[test]
    fn identity_cannot_be_forged_or_split() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        h.insert("x-mcp-userid", HeaderValue::from_static("admin"));
        h.insert("x-mcp-roles", HeaderValue::from_static("mcp.admin"));
        h.insert("x-user", HeaderValue::from_static("admin"));
        let names = crate::IdentityHeaders {
            user_id: http::HeaderName::from_static("x-user"),
            roles: http::HeaderName::from_static("x-groups"),
        };
        let p = mcp_gateway_core::Principal::new(
            "Zoë",
            None,
            vec!["a,mcp.admin".into(), "100%".into(), "team a".into()],
        );
        let upstream = [
            (
                HeaderName::from_static("x-api"),
                HeaderValue::from_static("1"),
            ),
            (
                HeaderName::from_static("x-api"),
                HeaderValue::from_static("2"),
            ),
            (
                HeaderName::from_static("x-user"),
                HeaderValue::from_static("forged"),
            ),
        ];
        let h = written(&Forward {
            names: Some(&names),
            principal: Some(&p),
            upstream: &upstream,
            ..plain(&h)
        });
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert_eq!(h.get_all("x-api").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(h.get_all("x-user").iter().count(), 1);
        assert!(h.get("x-mcp-userid").is_none() && h.get("x-mcp-roles").is_none());
        assert_eq!(h["x-user"], "Zo%C3%AB");
        assert_eq!(h["x-groups"], "a%2Cmcp.admin,100%25,team a");
        // Identity forwarding off: forged defaults are still dropped.
        let mut h = HeaderMap::new();
        h.insert("x-mcp-userid", HeaderValue::from_static("admin"));
        h.insert("x-user", HeaderValue::from_static("admin"));
        let h = written(&Forward {
            principal: Some(&p),
            ..plain(&h)
        });
        assert!(h.get("x-mcp-userid").is_none());
        assert_eq!(
            h["x-user"], "admin",
            "not an identity header when none are configured"
        );
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_do_not_cross_mcp_headers_do() {
        let h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("host", "gw.example:8080"),
            ("mcp-session-id", "abc"),
            ("mcp-protocol-version", "2025-06-18"),
            ("last-event-id", "42"),
            ("accept", "application/json, text/event-stream"),
            ("content-length", "2"),
            ("x-forwarded-proto", "https"),
            ("traceparent", "00-client"),
        ]);
        let mut trace = HeaderMap::new();
        trace.insert("traceparent", HeaderValue::from_static("00-gateway"));
        let h = written(&Forward {
            client: Some("10.0.0.9:5555".parse().unwrap()),
            extra: &trace,
            ..plain(&h)
        });
        for gone in [
            "connection",
            "keep-alive",
            "x-private",
            "transfer-encoding",
            "te",
            "upgrade",
            "proxy-authorization",
            "host",
            "content-length",
            "authorization",
        ] {
            assert!(!h.contains_key(gone), "{gone} must not be forwarded");
        }
        for kept in [
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "accept",
        ] {
            assert!(h.contains_key(kept), "{kept} must be forwarded");
        }
        assert_eq!(
            h.get_all("traceparent").iter().collect::<Vec<_>>(),
            ["00-gateway"]
        );
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 1);
        assert_eq!(h["x-forwarded-host"], "gw.example:8080");
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = map(&[(name, "x"), ("accept", "*/*")]);
            let sent = written(&plain(&h));
            assert!(!sent.contains_key(name), "{name} must not be forwarded");
            assert!(sent.contains_key("accept"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} must not be answered");
            assert!(h.contains_key("accept"));
        }
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        let ips: Vec<std::net::IpAddr> = vec![
            "0.0.0.0".parse().unwrap(),
            "10.0.0.9".parse().unwrap(),
            "127.0.0.1".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "192.168.100.20".parse().unwrap(),
            "::1".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ];
        for ip in ips
            .into_iter()
            .chain((0..=255u8).map(|b| [b, b / 10, 99, 100].into()))
        {
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string().as_bytes());
        }
    }

    #[test]
    fn x_forwarded_for_is_appended() {
        let h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        let h = written(&Forward {
            client: Some("10.0.0.9:1".parse().unwrap()),
            ..plain(&h)
        });
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["1.2.3.4, 10.0.0.9"]
        );
    }

    #[test]
    fn stateless_era_is_read_from_the_protocol_version() {
        assert!(is_stateless(&map(&[(
            "mcp-protocol-version",
            "2026-07-28"
        )])));
        assert!(is_stateless(&map(&[(
            "mcp-protocol-version",
            "2027-01-01"
        )])));
        assert!(!is_stateless(&map(&[(
            "mcp-protocol-version",
            "2025-11-25"
        )])));
        assert!(!is_stateless(&map(&[(
            "mcp-protocol-version",
            "2026-07-28x"
        )])));
        assert!(!is_stateless(&map(&[])));
    }

    fn loopback_config() -> RoutingConfig {
        RoutingConfig {
            allowed_hosts: RoutingConfig::default_allowed_hosts("127.0.0.1".parse().unwrap()),
            ..RoutingConfig::default()
        }
    }

    #[test]
    fn loopback_gateway_refuses_foreign_hosts() {
        let c = loopback_config();
        assert!(check_host_and_origin(&map(&[("host", "127.0.0.1:8080")]), &c).is_ok());
        assert!(check_host_and_origin(&map(&[("host", "localhost")]), &c).is_ok());
        assert!(check_host_and_origin(&map(&[("host", "LocalHost:9")]), &c).is_ok());
        assert!(check_host_and_origin(&map(&[("host", "[::1]:80")]), &c).is_ok());
        assert!(matches!(
            check_host_and_origin(&map(&[("host", "evil.example:8080")]), &c),
            Err(ProxyError::HostNotAllowed(_))
        ));
        assert!(check_host_and_origin(&map(&[]), &c).is_err());
    }

    #[test]
    fn origins_are_checked_when_present() {
        let c = loopback_config();
        let ok = |h: &[(&str, &str)]| check_host_and_origin(&map(h), &c).is_ok();
        assert!(ok(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:6274")
        ]));
        assert!(!ok(&[
            ("host", "localhost:8080"),
            ("origin", "https://evil.example")
        ]));
        let c = RoutingConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..RoutingConfig::default()
        };
        let ok = |h: &[(&str, &str)]| check_host_and_origin(&map(h), &c).is_ok();
        assert!(ok(&[
            ("host", "gw.example"),
            ("origin", "https://app.example")
        ]));
        assert!(!ok(&[
            ("host", "gw.example"),
            ("origin", "https://other.example")
        ]));
        assert!(!ok(&[
            ("host", "gw.example"),
            ("origin", "http://localhost:1")
        ]));
        assert!(ok(&[("host", "anything.example")]));
    }

    #[test]
    fn only_real_loopback_origins_count_as_loopback() {
        // A gateway that accepts any Host (bound off loopback): the attacker's page and Host.
        let c = RoutingConfig::default();
        let ok = |host: &str, origin: &str| {
            check_host_and_origin(&map(&[("host", host), ("origin", origin)]), &c).is_ok()
        };
        for evil in [
            "http://127.0.0.1.attacker.example",
            "http://127.attacker.example",
            "http://localhost.attacker.example",
            "http://[::1].attacker.example",
        ] {
            assert!(!ok("127.0.0.1.attacker.example", evil), "{evil}");
            assert!(!ok("localhost:8080", evil), "{evil}");
        }
        for good in [
            "http://127.0.0.1:6274",
            "http://127.1.2.3",
            "http://localhost:6274",
            "http://app.localhost",
            "http://App.LocalHost.",
            "http://[::1]:6274",
        ] {
            assert!(ok("localhost:8080", good), "{good}");
            assert!(ok("127.0.0.1:8080", good), "{good}");
        }
        assert!(is_loopback_host("127.0.0.1") && !is_loopback_host("127.0.0.1.x"));
        assert!(is_loopback_host("LOCALHOST") && !is_loopback_host(".localhost"));
        assert!(!is_loopback_host("xlocalhost") && !is_loopback_host("é.localhos"));
    }
}
