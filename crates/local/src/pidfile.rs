//! Pid files of replica processes, so the processes of a gateway that died without stopping
//! them (SIGKILL, the OOM killer, an abort) are stopped at its next start rather than left
//! running beside their successors.
//!
//! Each running replica has `<run_dir>/<adapter>.<replica id>.<pid>.pid` holding its process
//! group (= its pid: replicas lead their own group) and the process's start time (field 22 of
//! `/proc/<pid>/stat`), removed when the replica is gone. [`reap_orphans`] signals a recorded
//! group only if a process of that pid with that start time still exists, so a pid reused by
//! an unrelated process is never signalled. Without `/proc` (not Linux) no start time can be
//! read, files are still written, and nothing is signalled.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The pid file of one running replica process; removed when dropped.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Records process group `pid` (a failure is logged: the replica runs anyway).
    pub(crate) fn create(dir: &Path, adapter: &str, replica: &str, pid: u32) -> Option<Self> {
        let path = dir.join(format!("{adapter}.{replica}.{pid}.pid"));
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            let started = start_time(pid).unwrap_or_default();
            writeln!(file, "{pid} {started}")
        };
        match write() {
            Ok(()) => Some(Self { path }),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err,
                    "cannot write a replica's pid file: if the gateway is killed, this replica outlives it");
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Stops every process group recorded in `dir` that still runs (TERM, then KILL after
/// `grace`) and removes the files. Returns how many groups were stopped.
pub fn reap_orphans(dir: &Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut alive = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let recorded = std::fs::read_to_string(&path).ok().and_then(|text| {
            let mut fields = text.split_whitespace();
            let pid: u32 = fields.next()?.parse().ok()?;
            let started: u64 = fields.next()?.parse().ok()?;
            Some((pid, started))
        });
        let _ = std::fs::remove_file(&path);
        if let Some((pid, started)) = recorded
            && started != 0
            && start_time(pid) == Some(started)
        {
            tracing::warn!(pid, file = %path.display(),
                "a replica of a previous gateway run is still running (the gateway was killed?): stopping it");
            signal(pid, Signal::SIGTERM);
            alive.push((pid, started));
        }
    }
    let deadline = std::time::Instant::now() + grace;
    while alive.iter().any(|&(pid, s)| start_time(pid) == Some(s))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &(pid, started) in &alive {
        if start_time(pid) == Some(started) {
            signal(pid, Signal::SIGKILL);
        }
    }
    alive.len()
}

fn signal(pgid: u32, signal: Signal) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
}

/// The start time of process `pid` in clock ticks since boot (`/proc/<pid>/stat` field 22),
/// `None` when there is no such (live) process or no `/proc`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); a zombie has exited.
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_this_process_is_read_and_stable() {
        let me = std::process::id();
        let t = start_time(me).expect("a start time");
        assert!(t > 0);
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn a_recorded_pid_reused_by_another_process_is_not_signalled() {
        let dir = tempfile::tempdir().unwrap();
        // Our own pid with a wrong start time: as if the pid had been reused since.
        let me = std::process::id();
        std::fs::write(
            dir.path().join(format!("a.0.{me}.pid")),
            format!("{me} 1\n"),
        )
        .unwrap();
        assert_eq!(reap_orphans(dir.path(), Duration::from_millis(10)), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "removed");
    }
}
