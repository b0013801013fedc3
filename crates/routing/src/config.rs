//! Settings of the data plane: timeouts, limits, passive health and DNS-rebinding protection.

use std::time::Duration;

/// Settings of [`Gateway`](crate::Gateway). `Default` runs on a laptop.
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// Time to open a TCP connection to a replica (default 5 s). On expiry the replica leaves
    /// placement (see [`eject_for`](Self::eject_for)) and a new session or stateless request
    /// is sent to the next replica; with none left, 504.
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the replica's response headers (default 300 s,
    /// long enough for slow tools answered as JSON). On expiry: 504.
    pub request_timeout: Duration,
    /// A response body (an SSE stream, say) that sends nothing for this long is closed
    /// (default 600 s). MCP servers that keep streams open send pings well within this.
    pub stream_idle_timeout: Duration,
    /// How long a failing replica is first left out of placement (default 10 s): one that
    /// refused or timed out a connection, or answered [`eject_after_5xx`](Self::eject_after_5xx)
    /// 5xx in a row. Each further ejection without a success in between lasts twice as long,
    /// up to [`eject_max`](Self::eject_max). Sessions it owns are still routed to it.
    pub eject_for: Duration,
    /// Consecutive 5xx answers that eject a replica (default 3).
    pub eject_after_5xx: u32,
    /// The longest ejection (default 5 min).
    pub eject_max: Duration,
    /// A pooled connection to a replica unused this long is closed rather than reused (default
    /// 4 s). Shorter than the keep-alive timeout of common servers (5 s for uvicorn, Node.js and
    /// Apache), so the gateway never sends a request on a connection the replica is closing at
    /// that moment (which fails as "connection reset", and a POST cannot be replayed).
    pub upstream_idle_timeout: Duration,
    /// Largest request body (default 4 MiB); beyond it, 413.
    pub max_body_bytes: u64,
    /// Largest total size of request header names and values (default 32 KiB); beyond it, 431.
    pub max_header_bytes: usize,
    /// Live sessions this gateway accepts (default 10 000); a new session beyond it gets 503.
    pub max_sessions: u64,
    /// Live sessions one principal (issuer and subject) may hold across all adapters (default
    /// 100), so one caller cannot take the whole of `max_sessions` from everyone else; a new
    /// session beyond it gets 429 with `Retry-After`. Counted by the session store (across
    /// gateways with Redis). Not applied to the anonymous caller of `--insecure-no-auth`.
    pub max_sessions_per_principal: u64,
    /// Allowed `Host` values (host or host:port, case-insensitive). Empty: any host.
    pub allowed_hosts: Vec<String>,
    /// Allowed `Origin` values (`scheme://host[:port]`; `*` allows any). Requests with no
    /// `Origin` (non-browser clients) are always allowed; loopback origins are allowed when the
    /// request's `Host` is loopback too.
    pub allowed_origins: Vec<String>,
    /// Headers that carry the caller's identity to the replicas (default `X-Mcp-UserId` and
    /// `X-Mcp-Roles`, as microsoft/mcp-gateway sends them). Whatever a client sends under these
    /// names is dropped; `None` forwards no identity.
    pub identity_headers: Option<IdentityHeaders>,
}

/// Header names of the caller's identity, as sent to replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The principal's subject.
    pub user_id: http::HeaderName,
    /// The principal's roles, comma-separated.
    pub roles: http::HeaderName,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            user_id: crate::headers::DEFAULT_USER_ID,
            roles: crate::headers::DEFAULT_ROLES,
        }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(600),
            eject_for: Duration::from_secs(10),
            eject_after_5xx: 3,
            eject_max: Duration::from_secs(300),
            upstream_idle_timeout: Duration::from_secs(4),
            max_body_bytes: 4 * 1024 * 1024,
            max_header_bytes: 32 * 1024,
            max_sessions: 10_000,
            max_sessions_per_principal: 100,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            identity_headers: Some(IdentityHeaders::default()),
        }
    }
}

impl RoutingConfig {
    pub(crate) fn ejection(&self) -> crate::placement::Ejection {
        crate::placement::Ejection {
            after_5xx: self.eject_after_5xx.max(1),
            base: self.eject_for,
            max: self.eject_max.max(self.eject_for),
        }
    }

    /// The `Host` values a server bound to `ip` should accept by default: loopback names for a
    /// loopback address (what DNS rebinding attacks), anything otherwise (a gateway behind a
    /// load balancer is reached under names it cannot know).
    pub fn default_allowed_hosts(ip: std::net::IpAddr) -> Vec<String> {
        if ip.is_loopback() {
            vec!["localhost".into(), "127.0.0.1".into(), "[::1]".into()]
        } else {
            Vec::new()
        }
    }
}
