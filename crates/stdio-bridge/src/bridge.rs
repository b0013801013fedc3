//! The live sessions of one bridge, the process limit, and the idle reaper.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::config::BridgeConfig;
use crate::error::BridgeError;
use crate::log::{LogSink, LogSource};
use crate::process;
use crate::session::{Session, Transport};

/// A live session as the runtime sees it (for status pages).
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: String,
    pub pid: u32,
    pub transport: Transport,
    /// Idle this long (`None` while a request waits or a stream is open).
    pub idle_for: Option<Duration>,
}

pub(crate) struct Shared {
    pub(crate) config: BridgeConfig,
    pub(crate) logs: LogSink,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    processes: AtomicUsize,
    shutting_down: AtomicBool,
}

/// One unit of the process limit, held until the process is gone.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.processes.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    pub(crate) fn new(config: BridgeConfig) -> Arc<Self> {
        let logs = LogSink::new(config.on_log.clone());
        Arc::new(Self {
            config,
            logs,
            sessions: Mutex::new(HashMap::new()),
            processes: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reserve(self: &Arc<Self>) -> Result<Slot, BridgeError> {
        let max = self.config.max_processes;
        self.processes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| BridgeError::ProcessLimit(max))?;
        Ok(Slot(self.clone()))
    }

    /// Starts a process for a new session of `transport`.
    pub(crate) fn open(
        self: &Arc<Self>,
        transport: Transport,
    ) -> Result<Arc<Session>, BridgeError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(BridgeError::ShuttingDown);
        }
        let slot = self.reserve()?;
        let spawned = process::spawn(&self.config)?;
        let id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let (session, control) = Session::new(
            id.clone(),
            transport,
            spawned.pid,
            spawned.stdin,
            self.config.backlog,
            self.config.request_timeout,
        );
        {
            let mut sessions = self.sessions();
            // Checked under the lock that `stop_all` takes, so no session slips past a shutdown.
            if self.shutting_down.load(Ordering::Acquire) {
                drop(sessions);
                process::signal_group(spawned.pid, Signal::SIGKILL);
                return Err(BridgeError::ShuttingDown); // the child is killed on drop
            }
            sessions.insert(id.clone(), session.clone());
        }
        self.logs.emit(
            &id,
            spawned.pid,
            LogSource::Bridge,
            // Not the arguments: they may hold a token, and this line reaches the gateway's log.
            format!("process started: {}", self.config.command),
        );
        let max_line = self.config.max_line_bytes;
        let max_log_line = self.config.max_log_line_bytes;
        tokio::spawn(process::read_stdout(
            spawned.stdout,
            session.clone(),
            self.logs.clone(),
            max_line,
            max_log_line,
        ));
        // Stderr is only ever logged: read with the log's cap.
        tokio::spawn(process::read_stderr(
            spawned.stderr,
            session.clone(),
            self.logs.clone(),
            max_log_line,
        ));
        let shared = self.clone();
        let supervised = session.clone();
        tokio::spawn(async move {
            let grace = shared.config.stop_grace;
            let logs = shared.logs.clone();
            let ended =
                process::supervise(spawned.child, supervised.clone(), control, grace, logs).await;
            shared.sessions().remove(&supervised.id);
            drop(slot);
            let _ = ended.send(true);
        });
        Ok(session)
    }

    /// The live session `id` of `transport`.
    pub(crate) fn get(&self, id: &str, transport: Transport) -> Result<Arc<Session>, BridgeError> {
        self.sessions()
            .get(id)
            .filter(|s| s.transport == transport && s.end_reason().is_none())
            .cloned()
            .ok_or(BridgeError::SessionNotFound)
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions().len()
    }

    pub(crate) fn infos(&self) -> Vec<SessionInfo> {
        self.sessions()
            .values()
            .map(|s| SessionInfo {
                id: s.id.to_string(),
                pid: s.pid,
                transport: s.transport,
                idle_for: s.idle_for(),
            })
            .collect()
    }

    /// Stops the sessions idle for longer than the idle timeout.
    pub(crate) fn reap_idle(&self) {
        let limit = self.config.idle_timeout;
        let idle: Vec<_> = self
            .sessions()
            .values()
            .filter(|s| s.idle_for().is_some_and(|d| d >= limit))
            .cloned()
            .collect();
        for session in idle {
            self.logs.emit(
                &session.id,
                session.pid,
                LogSource::Bridge,
                format!("session idle for {limit:?}: stopping its process"),
            );
            tokio::spawn(async move { session.stop().await });
        }
    }

    /// Refuses new sessions from now on and stops every process (politely, in parallel).
    pub(crate) async fn stop_all(&self) {
        self.shutting_down.store(true, Ordering::Release);
        let sessions: Vec<_> = self.sessions().values().cloned().collect();
        let mut stops = tokio::task::JoinSet::new();
        for session in sessions {
            stops.spawn(async move { session.stop().await });
        }
        while stops.join_next().await.is_some() {}
    }

    /// Refuses new sessions and kills every process group at once (for `Drop`, which cannot wait).
    pub(crate) fn kill_all_now(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for session in self.sessions().values() {
            session.close_stdin();
            process::signal_group(session.pid, Signal::SIGKILL);
        }
    }
}

/// How often the reaper looks for idle sessions.
pub(crate) fn reap_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30))
}
