//! Log lines of the bridged processes, handed to the runtime (hook and broadcast); the
//! bridge's own lines also go to `tracing`.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::config::LogHook;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// A stdout line that is not a JSON-RPC message (it is not forwarded to the client).
    Stdout,
    /// A stderr line.
    Stderr,
    /// The bridge itself: process started, exited, stopped, killed, a line too long.
    Bridge,
}

/// One line written by (or about) the process of one session.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: SystemTime,
    /// The MCP session the process serves.
    pub session: Arc<str>,
    pub pid: u32,
    pub source: LogSource,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub line: String,
}

/// Fans log lines out to the hook, the broadcast channel and `tracing`.
#[derive(Clone)]
pub(crate) struct LogSink {
    hook: Option<LogHook>,
    tx: broadcast::Sender<LogLine>,
}

impl LogSink {
    pub(crate) fn new(hook: Option<LogHook>) -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { hook, tx }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<LogLine> {
        self.tx.subscribe()
    }

    pub(crate) fn emit(&self, session: &Arc<str>, pid: u32, source: LogSource, line: String) {
        // What the process prints goes to the hook and the broadcast only, never to `tracing`:
        // servers print their environment and requests, secrets included, and the gateway's
        // log is read by more people than the adapter's owner.
        if source == LogSource::Bridge {
            tracing::info!(session = %session, pid, "{line}");
        }
        let line = LogLine {
            at: SystemTime::now(),
            session: session.clone(),
            pid,
            source,
            line,
        };
        if let Some(hook) = &self.hook {
            hook(&line);
        }
        // No receiver is not an error: nobody asked for the broadcast.
        let _ = self.tx.send(line);
    }
}
