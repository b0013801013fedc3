//! Child processes: started in their own process group, read line by line, stopped politely
//! (stdin closed, SIGTERM to the group, SIGKILL after the grace period) and never left behind.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use crate::config::BridgeConfig;
use crate::error::BridgeError;
use crate::jsonrpc::classify_child;
use crate::log::{LogSink, LogSource};
use crate::session::{Control, Session};

/// A started process and its pipes.
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: ChildStderr,
}

/// Starts `config.command` with piped stdio, in a new process group whose id is its pid.
pub(crate) fn spawn(config: &BridgeConfig) -> Result<Spawned, BridgeError> {
    let spawn_error = |source| BridgeError::Spawn {
        command: config.command.clone(),
        source,
    };
    let mut command = Command::new(&config.command);
    if config.clear_env {
        command.env_clear();
    }
    command
        .args(&config.args)
        .envs(&config.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &config.cwd {
        command.current_dir(cwd);
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    let missing = || spawn_error(std::io::Error::other("a pipe of the child is missing"));
    let pid = child.id().ok_or_else(missing)?;
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    Ok(Spawned {
        child,
        pid,
        stdin,
        stdout,
        stderr,
    })
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is not an error.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    if raw <= 1 {
        return; // never signal "every process" or init's group
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(err) => tracing::warn!(pgid, ?signal, %err, "cannot signal process group"),
    }
}

/// Runs the process of `session` until it exits or is asked to stop, then cleans up its group
/// and ends the session. Returns when nothing of the process is left, with the sender that
/// tells [`Session::ended`] waiters (the caller forgets the session first).
pub(crate) async fn supervise(
    mut child: Child,
    session: Arc<Session>,
    mut control: Control,
    grace: Duration,
    logs: LogSink,
) -> tokio::sync::watch::Sender<bool> {
    let pid = session.pid;
    let stopped_by_us = tokio::select! {
        status = child.wait() => {
            let reason = describe(status);
            logs.emit(&session.id, pid, LogSource::Bridge, format!("process exited ({reason})"));
            // Mark the session ended before anything else, so no new request reaches it.
            session.end(reason);
            false
        }
        _ = control.stop_rx.wait_for(|stop| *stop) => true,
    };
    if stopped_by_us {
        session.end("stopped by the bridge".into());
        session.close_stdin();
        signal_group(pid, Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => describe(status),
            Err(_) => {
                signal_group(pid, Signal::SIGKILL);
                format!("killed after {grace:?}: {}", describe(child.wait().await))
            }
        };
        logs.emit(
            &session.id,
            pid,
            LogSource::Bridge,
            format!("process stopped ({status})"),
        );
    }
    // Whatever the leader left behind in its group (npx → node, shells) goes too.
    signal_group(pid, Signal::SIGKILL);
    control.ended_tx
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(err) => format!("wait failed: {err}"),
    }
}

/// Reads the process's stdout: JSON-RPC messages go to the session, other lines to the log.
pub(crate) async fn read_stdout(
    stdout: ChildStdout,
    session: Arc<Session>,
    logs: LogSink,
    max_line: usize,
    max_log_line: usize,
) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line, max_line).await {
            Ok(Line::Eof) => break,
            Ok(Line::TooLong) => logs.emit(
                &session.id,
                session.pid,
                LogSource::Bridge,
                format!("stdout line longer than {max_line} bytes dropped"),
            ),
            Ok(Line::Complete) => {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let message = serde_json::from_slice::<Value>(&line).ok();
                match message.as_ref().and_then(classify_child) {
                    Some(kind) => session.deliver(message.unwrap_or_default(), kind).await,
                    None => {
                        let cut = line.len().min(max_log_line);
                        let mut text = String::from_utf8_lossy(&line[..cut]).trim_end().to_owned();
                        if cut < line.len() {
                            text.push_str(&format!(" [{} more bytes cut]", line.len() - cut));
                        }
                        logs.emit(&session.id, session.pid, LogSource::Stdout, text);
                    }
                }
            }
            Err(err) => {
                tracing::debug!(session = %session.id, %err, "stdout read failed");
                break;
            }
        }
    }
}

/// Reads the process's stderr into the log.
pub(crate) async fn read_stderr(
    stderr: ChildStderr,
    session: Arc<Session>,
    logs: LogSink,
    max_line: usize,
) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        match read_line(&mut reader, &mut line, max_line).await {
            Ok(Line::Complete) => logs.emit(
                &session.id,
                session.pid,
                LogSource::Stderr,
                String::from_utf8_lossy(&line).trim_end().to_owned(),
            ),
            Ok(Line::TooLong) => logs.emit(
                &session.id,
                session.pid,
                LogSource::Bridge,
                format!("stderr line longer than {max_line} bytes dropped"),
            ),
            Ok(Line::Eof) | Err(_) => break,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Complete,
    TooLong,
    Eof,
}

/// Reads one line (without its `\n`) into `buf`, holding at most `max` bytes: a longer line is
/// consumed and reported as [`Line::TooLong`]. A last line without `\n` counts as complete.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_long, buf.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::Eof,
                (false, false) => Line::Complete,
            });
        }
        let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long && buf.len() + chunk.len() <= max {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
            buf.clear();
        }
        reader.consume(used);
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_and_capped() {
        let input = b"short\na very long line\n\nlast".to_vec();
        let mut reader = BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buf, 8).await.unwrap();
            if line == Line::Eof {
                break;
            }
            out.push((line, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(
            out,
            [
                (Line::Complete, "short".to_owned()),
                (Line::TooLong, String::new()),
                (Line::Complete, String::new()),
                (Line::Complete, "last".to_owned()),
            ]
        );
    }
}
