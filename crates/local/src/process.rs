//! One supervised replica: a child process on a free loopback port, probed until it answers,
//! restarted with backoff when it exits, stopped with TERM then KILL to its process group.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use mcp_gateway_core::{AdapterName, AdapterSpec, ReplicaState};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::LocalOptions;
use crate::logs::{AdapterLogs, Source, pump};

/// What a replica process is started with. Two replicas with equal launches are
/// interchangeable; a changed launch is rolled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Launch {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mcp_path: String,
}

impl Launch {
    /// `None` when the spec runs no command.
    pub(crate) fn of(spec: &AdapterSpec) -> Option<Self> {
        Some(Self {
            command: spec.command.clone()?,
            args: spec.args.clone(),
            env: spec.environment_variables.clone(),
            mcp_path: spec.mcp_path().to_owned(),
        })
    }
}

/// What is shared by every replica of one adapter.
pub(crate) struct ProcessContext {
    pub adapter: AdapterName,
    pub logs: Arc<AdapterLogs>,
    pub options: Arc<LocalOptions>,
    /// Called after every state change of a replica (to refresh the resolver).
    pub on_change: Arc<dyn Fn() + Send + Sync>,
}

/// A replica as the supervisor last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Starting, Ready or Crashed.
    pub state: ReplicaState,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub restarts: u32,
}

/// Handle of one supervised replica. Dropping it stops the replica (TERM, then KILL after the
/// grace period) in the background; [`ReplicaProcess::stop`] does the same and returns the
/// task to await.
pub(crate) struct ReplicaProcess {
    pub ordinal: u32,
    pub id: Arc<str>,
    pub launch: Arc<Launch>,
    state: watch::Receiver<Snapshot>,
    _stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ReplicaProcess {
    pub(crate) fn spawn(
        ctx: Arc<ProcessContext>,
        ordinal: u32,
        id: Arc<str>,
        launch: Arc<Launch>,
    ) -> Self {
        let (state_tx, state) = watch::channel(Snapshot {
            state: ReplicaState::Starting,
            port: None,
            pid: None,
            exit_code: None,
            restarts: 0,
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let supervisor = Supervisor {
            ctx,
            ordinal,
            id: id.clone(),
            launch: launch.clone(),
            state: state_tx,
        };
        let task = tokio::spawn(supervisor.run(stop_rx));
        Self {
            ordinal,
            id,
            launch,
            state,
            _stop: stop_tx,
            task,
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.state.borrow().state == ReplicaState::Ready
    }

    /// A receiver of state changes (marked seen at the current state).
    pub(crate) fn watch(&self) -> watch::Receiver<Snapshot> {
        let mut rx = self.state.clone();
        rx.mark_unchanged();
        rx
    }

    /// Stops the replica; the returned task ends once its process group is gone.
    pub(crate) fn stop(self) -> JoinHandle<()> {
        self.task
    }
}

struct Supervisor {
    ctx: Arc<ProcessContext>,
    ordinal: u32,
    id: Arc<str>,
    launch: Arc<Launch>,
    state: watch::Sender<Snapshot>,
}

enum Ended {
    /// Asked to stop; the process group is gone.
    Stopped,
    /// The process exited (or could not be started) on its own.
    Exited {
        code: Option<i32>,
        port: Option<u16>,
        ready_for: Duration,
    },
}

impl Supervisor {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let options = self.ctx.options.clone();
        let mut backoff = options.restart_backoff;
        let mut restarts = 0;
        let mut port_hint = None;
        loop {
            let (code, port, ready_for) = match self.run_once(port_hint, restarts, &mut stop).await
            {
                Ended::Stopped => return,
                Ended::Exited {
                    code,
                    port,
                    ready_for,
                } => (code, port, ready_for),
            };
            port_hint = port;
            if ready_for >= options.restart_backoff_max {
                // It ran well for a while: this crash starts a new series.
                backoff = options.restart_backoff;
            }
            let shown = code.map_or_else(
                || "could not start".to_owned(),
                |c| format!("exited with code {c}"),
            );
            self.gateway_line(&format!("{shown}; restarting in {backoff:?}"));
            tracing::warn!(adapter = %self.ctx.adapter, replica = self.ordinal, exit_code = ?code, ?backoff, "replica {shown}; restarting");
            self.set(|s| {
                s.state = ReplicaState::Crashed;
                s.exit_code = code;
                s.pid = None;
            });
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = &mut stop => return,
            }
            backoff = (backoff * 2).min(options.restart_backoff_max);
            restarts += 1;
        }
    }

    /// Starts the process once and watches it until it exits or is asked to stop.
    async fn run_once(
        &self,
        port_hint: Option<u16>,
        restarts: u32,
        stop: &mut oneshot::Receiver<()>,
    ) -> Ended {
        let options = &self.ctx.options;
        let exited = |code, port| Ended::Exited {
            code,
            port,
            ready_for: Duration::ZERO,
        };
        let port = match free_port(port_hint) {
            Ok(port) => port,
            Err(err) => {
                self.gateway_line(&format!("no free loopback port: {err}"));
                return exited(None, None);
            }
        };
        let mut child = match self.command(port).spawn() {
            Ok(child) => child,
            Err(err) => {
                self.gateway_line(&format!("cannot start {:?}: {err}", self.launch.command));
                return exited(None, Some(port));
            }
        };
        let pid = child.id();
        // Removed when this returns, i.e. once the process group is gone.
        let _pid_file = match (&options.run_dir, pid) {
            (Some(dir), Some(pid)) => {
                crate::pidfile::PidFile::create(dir, self.ctx.adapter.as_str(), &self.id, pid)
            }
            _ => None,
        };
        if let Some(out) = child.stdout.take() {
            let reader = BufReader::new(out);
            tokio::spawn(pump(
                reader,
                self.ctx.logs.clone(),
                self.ordinal,
                Source::Stdout,
            ));
        }
        if let Some(err) = child.stderr.take() {
            let reader = BufReader::new(err);
            tokio::spawn(pump(
                reader,
                self.ctx.logs.clone(),
                self.ordinal,
                Source::Stderr,
            ));
        }
        tracing::info!(adapter = %self.ctx.adapter, replica = self.ordinal, ?pid, port, "replica started");
        self.set(|s| {
            *s = Snapshot {
                state: ReplicaState::Starting,
                port: Some(port),
                pid,
                exit_code: s.exit_code,
                restarts,
            }
        });

        let mut probe = tokio::time::interval(options.probe_interval);
        probe.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ready_since: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                _ = &mut *stop => {
                    terminate(&mut child, pid, options.kill_grace).await;
                    tracing::info!(adapter = %self.ctx.adapter, replica = self.ordinal, ?pid, "replica stopped");
                    return Ended::Stopped;
                }
                status = child.wait() => {
                    // Whatever the leader left behind in its group goes with it.
                    signal_group(pid, Signal::SIGKILL);
                    let code = status.ok().and_then(|s| {
                        use std::os::unix::process::ExitStatusExt;
                        s.code().or_else(|| s.signal().map(|sig| 128 + sig))
                    });
                    return Ended::Exited {
                        code,
                        port: Some(port),
                        ready_for: ready_since.map_or(Duration::ZERO, |t| t.elapsed()),
                    };
                }
                _ = probe.tick(), if ready_since.is_none() => {
                    if answers(port, &self.launch.mcp_path, options.probe_timeout).await {
                        ready_since = Some(Instant::now());
                        tracing::info!(adapter = %self.ctx.adapter, replica = self.ordinal, port, "replica ready");
                        self.set(|s| s.state = ReplicaState::Ready);
                    }
                }
            }
        }
    }

    fn command(&self, port: u16) -> Command {
        let (port_s, ordinal_s) = (port.to_string(), self.ordinal.to_string());
        let mut cmd = Command::new(&self.launch.command);
        cmd.args(self.launch.args.iter().map(|a| {
            a.replace("{port}", &port_s)
                .replace("{replica}", &ordinal_s)
        }))
        .env_clear()
        .envs(
            self.ctx
                .options
                .pass_env
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .envs(&self.launch.env)
        .env("PORT", &port_s)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
        cmd
    }

    fn set(&self, change: impl FnOnce(&mut Snapshot)) {
        self.state.send_modify(change);
        (self.ctx.on_change)();
    }

    /// A line of the gateway's own about this replica, kept with its output.
    fn gateway_line(&self, text: &str) {
        self.ctx
            .logs
            .push(self.ordinal, Source::Stderr, &format!("[gateway] {text}"));
    }
}

/// A free loopback port: `hint` (the replica's previous port) if it is still free.
fn free_port(hint: Option<u16>) -> std::io::Result<u16> {
    if let Some(port) = hint
        && let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port))
    {
        return Ok(l.local_addr()?.port());
    }
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether an HTTP server answers (any status) on `path` of the loopback port.
async fn answers(port: u16, path: &str, timeout: Duration) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: 2\r\n\
             Connection: close\r\n\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 7];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(&head == b"HTTP/1.")
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
}

/// TERM to the process group, KILL after `grace`, then reap the leader.
async fn terminate(child: &mut Child, pid: Option<u32>, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        signal_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Members of the group that outlived the leader.
    signal_group(pid, Signal::SIGKILL);
}

fn signal_group(pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => {
            tracing::warn!(pid, %signal, error = %err, "cannot signal replica process group")
        }
    }
}
