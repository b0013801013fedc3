//! The audit trail as JSON lines: one [`AuditEvent`] per line, appended to a file or written to
//! stdout by a thread of its own, so a request never waits on the disk. [`AuditLog::close`]
//! writes every queued line before it returns.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread::JoinHandle;

use mcp_gateway_core::{AuditEvent, AuditSink};

use crate::TelemetryError;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    /// Appended to (created if missing).
    File(PathBuf),
}

impl std::str::FromStr for AuditTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("audit target is empty: use stdout or a file path".into()),
            "stdout" | "-" => Ok(Self::Stdout),
            path => Ok(Self::File(path.into())),
        }
    }
}

/// The JSON-lines audit sink.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<AuditEvent>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    pub fn open(target: &AuditTarget) -> Result<Self, TelemetryError> {
        let out: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        TelemetryError::Audit(format!("cannot open {}: {e}", path.display()))
                    })?,
            ),
        };
        let (tx, rx) = mpsc::channel::<AuditEvent>();
        let writer = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_lines(rx, out))
            .map_err(|e| TelemetryError::Audit(format!("cannot start the audit writer: {e}")))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes every line recorded so far and stops; later records are written directly.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn write_lines(rx: mpsc::Receiver<AuditEvent>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(event) = rx.recv() {
        write_one(&mut out, &event);
        // Drain what is queued, then flush: one write per burst, nothing left in the buffer
        // while the gateway is idle.
        while let Ok(event) = rx.try_recv() {
            write_one(&mut out, &event);
        }
        if let Err(e) = out.flush() {
            tracing::error!(error = %e, "could not write the audit trail");
        }
    }
    let _ = out.flush();
}

fn write_one(out: &mut impl Write, event: &AuditEvent) {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = out.write_all(&line) {
        tracing::error!(error = %e, "could not write the audit trail");
    }
}

impl AuditSink for AuditLog {
    fn record(&self, event: AuditEvent) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                if let Err(mpsc::SendError(event)) = tx.send(event) {
                    tracing::error!(?event, "audit writer gone; record lost");
                }
            }
            None => {
                drop(tx);
                // After close (a response that ended during shutdown): write it directly.
                write_one(&mut std::io::stderr(), &event);
            }
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: usize) -> AuditEvent {
        AuditEvent {
            time: "2026-01-01T00:00:00Z".into(),
            kind: "mcp",
            principal: None,
            adapter: Some("a".into()),
            replica: None,
            method: "tools/call".into(),
            target: Some(format!("t{i}")),
            request_id: None,
            decision: "allowed",
            reason: None,
            outcome: "ok".into(),
            status: 200,
            latency_ms: 1.0,
            arguments_sha256: None,
            arguments: None,
        }
    }

    #[test]
    fn every_line_is_written_by_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditTarget::File(path.clone())).unwrap();
        for i in 0..1000 {
            log.record(event(i));
        }
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999]["target"], "t999");
        assert!(lines[0].get("arguments").is_none());
    }
}
