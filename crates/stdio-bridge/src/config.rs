//! What the bridge runs and the limits it keeps.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::log::LogLine;

/// A callback that receives every log line of the bridge's processes (see [`LogLine`]).
pub type LogHook = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// Configuration of one bridge: one stdio MCP server program, run once per MCP session.
#[derive(Clone)]
pub struct BridgeConfig {
    /// The program to run (looked up in `PATH` when it has no `/`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables set for the process, on top of the bridge's own environment
    /// (which the child inherits, so `PATH` and `HOME` reach tools such as `npx`).
    pub env: BTreeMap<String, String>,
    /// Start processes with only `env` (not the bridge's environment). Default false.
    pub clear_env: bool,
    /// Working directory of the process; the bridge's own when `None`.
    pub cwd: Option<PathBuf>,
    /// Where the HTTP listener binds. Default `127.0.0.1:0` (a free loopback port).
    pub listen: SocketAddr,
    /// Most processes (= live sessions, both transports) at once; a new session beyond gets 503.
    /// Default 16.
    pub max_processes: usize,
    /// A session with no request in flight and no open stream for this long is ended (its
    /// process stopped). Default 10 minutes.
    pub idle_timeout: Duration,
    /// How long a request may wait for the process's response (including `initialize`, so it
    /// must cover a slow start such as `npx` downloading a package). Default 5 minutes.
    pub request_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a process is stopped. Default 5 seconds.
    pub stop_grace: Duration,
    /// Largest request body (413 beyond). Default 4 MiB.
    pub max_body_bytes: usize,
    /// Longest line the process may write on stdout or stderr; longer lines are dropped and
    /// logged. Default 64 MiB.
    pub max_line_bytes: usize,
    /// Longest log line: a longer stderr line is dropped (and said so), a longer stdout line
    /// that is not JSON-RPC is cut. Default 64 KiB, so a process printing huge lines cannot
    /// fill the gateway's memory through its log.
    pub max_log_line_bytes: usize,
    /// Messages kept for a session's `GET /mcp` stream while none is open (oldest dropped).
    /// Default 1000.
    pub backlog: usize,
    /// Called for every log line (stdout noise, stderr, process start and exit); also
    /// available as a broadcast from [`BridgeHandle::logs`](crate::BridgeHandle::logs).
    pub on_log: Option<LogHook>,
    /// When set, every request must carry it in [`ACCESS_TOKEN_HEADER`]; others get 403.
    /// The gateway sets a random one per bridge and adds it to the requests it forwards, so
    /// other local users (and web pages) cannot reach the processes behind the gateway's
    /// back. Default `None` ([`random_token`] makes one).
    pub access_token: Option<String>,
}

/// The request header carrying [`BridgeConfig::access_token`].
pub const ACCESS_TOKEN_HEADER: &str = "x-mcp-bridge-token";

/// A random token (244 bits from the operating system's source) for
/// [`BridgeConfig::access_token`].
pub fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl BridgeConfig {
    /// A bridge for `command args…` with the defaults above.
    pub fn new(
        command: impl Into<String>,
        args: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            command: command.into(),
            clear_env: false,
            args: args.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_processes: 16,
            idle_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            max_body_bytes: 4 * 1024 * 1024,
            max_line_bytes: 64 * 1024 * 1024,
            max_log_line_bytes: 64 * 1024,
            backlog: 1000,
            on_log: None,
            access_token: None,
        }
    }

    /// Sets [`on_log`](Self::on_log).
    pub fn on_log(mut self, hook: impl Fn(&LogLine) + Send + Sync + 'static) -> Self {
        self.on_log = Some(Arc::new(hook));
        self
    }
}

impl fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("listen", &self.listen)
            .field("max_processes", &self.max_processes)
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("max_log_line_bytes", &self.max_log_line_bytes)
            .field("backlog", &self.backlog)
            .field("on_log", &self.on_log.is_some())
            .field("access_token", &self.access_token.is_some())
            .finish()
    }
}
