//! One MCP session: one process, the requests waiting for its answers, and the stream that
//! carries whatever the process writes that belongs to no waiting request.
//!
//! Routing of what the process writes (it tags nothing, so the bridge decides):
//! - a response goes to the request with its `id`;
//! - a `notifications/progress` goes to the request whose `progressToken` it names;
//! - any other notification or server request goes to the oldest request still waiting on an
//!   SSE response, else to the session's stream (`GET /mcp`), else into a bounded backlog that
//!   the next `GET /mcp` receives first.
//!
//! Legacy (HTTP+SSE) sessions send everything to their one stream.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::body::sse_event;
use crate::error::BridgeError;
use crate::jsonrpc::{ChildMessage, id_key};

/// Which HTTP transport a session was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP (`/mcp`).
    StreamableHttp,
    /// HTTP+SSE of revision 2024-11-05 (`/sse` + `/messages`).
    LegacySse,
}

/// What a waiting request receives.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// A notification or server request written while the request waits (SSE responses only).
    Note(Value),
    /// The response; nothing follows.
    Done(Value),
    /// The process exited (the reason) before answering; nothing follows.
    Failed(String),
}

struct Pending {
    tx: mpsc::Sender<Delivery>,
    progress_token: Option<String>,
    sse: bool,
    seq: u64,
}

struct State {
    pending: HashMap<String, Pending>,
    next_seq: u64,
    stream: Option<mpsc::Sender<Bytes>>,
    backlog: VecDeque<Value>,
    last_active: Instant,
    /// Why the session ended, once it has.
    ended: Option<String>,
}

pub(crate) struct Session {
    pub(crate) id: Arc<str>,
    pub(crate) transport: Transport,
    pub(crate) pid: u32,
    stdin: tokio::sync::Mutex<Option<ChildStdin>>,
    state: Mutex<State>,
    backlog_limit: usize,
    write_timeout: Duration,
    stop_tx: watch::Sender<bool>,
    ended_rx: watch::Receiver<bool>,
}

/// The supervisor's side of a session: learns when to stop, tells when it has ended.
pub(crate) struct Control {
    pub(crate) stop_rx: watch::Receiver<bool>,
    pub(crate) ended_tx: watch::Sender<bool>,
}

impl Session {
    pub(crate) fn new(
        id: Arc<str>,
        transport: Transport,
        pid: u32,
        stdin: ChildStdin,
        backlog_limit: usize,
        write_timeout: Duration,
    ) -> (Arc<Self>, Control) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (ended_tx, ended_rx) = watch::channel(false);
        let session = Arc::new(Self {
            id,
            transport,
            pid,
            stdin: tokio::sync::Mutex::new(Some(stdin)),
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_seq: 0,
                stream: None,
                backlog: VecDeque::new(),
                last_active: Instant::now(),
                ended: None,
            }),
            backlog_limit,
            write_timeout,
            stop_tx,
            ended_rx,
        });
        (session, Control { stop_rx, ended_tx })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the session, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // === client → process ===

    /// Registers a request, writes it to the process, and returns where its answer arrives.
    pub(crate) async fn request(
        &self,
        message: &Value,
        id: &Value,
        progress_token: Option<String>,
        sse: bool,
    ) -> Result<mpsc::Receiver<Delivery>, BridgeError> {
        let key = id_key(id);
        let (tx, rx) = mpsc::channel(64);
        {
            let mut state = self.state();
            if state.ended.is_some() {
                return Err(BridgeError::SessionNotFound);
            }
            if state.pending.contains_key(&key) {
                return Err(BridgeError::DuplicateId(key));
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            state.last_active = Instant::now();
            state.pending.insert(
                key.clone(),
                Pending {
                    tx,
                    progress_token,
                    sse,
                    seq,
                },
            );
        }
        if let Err(err) = self.write(message).await {
            self.forget(&key);
            return Err(err);
        }
        Ok(rx)
    }

    /// Writes a notification or response of the client (or a request whose answer goes to the
    /// session's stream) to the process.
    pub(crate) async fn write(&self, message: &Value) -> Result<(), BridgeError> {
        if self.state().ended.is_some() {
            return Err(BridgeError::SessionNotFound);
        }
        self.touch();
        let mut line =
            serde_json::to_vec(message).map_err(|e| BridgeError::Stdin(e.to_string()))?;
        line.push(b'\n');
        let write = async {
            let mut stdin = self.stdin.lock().await;
            let Some(stdin) = stdin.as_mut() else {
                return Err(BridgeError::SessionNotFound);
            };
            stdin
                .write_all(&line)
                .await
                .map_err(|e| BridgeError::Stdin(e.to_string()))?;
            stdin
                .flush()
                .await
                .map_err(|e| BridgeError::Stdin(e.to_string()))
        };
        tokio::time::timeout(self.write_timeout, write)
            .await
            .map_err(|_| BridgeError::Timeout(self.write_timeout))?
    }

    /// Stops waiting for the answer to request `key` (timed out, or its client went away).
    pub(crate) fn forget(&self, key: &str) {
        self.state().pending.remove(key);
    }

    /// Closes the process's stdin, unless a write holds it right now.
    pub(crate) fn close_stdin(&self) {
        if let Ok(mut stdin) = self.stdin.try_lock() {
            stdin.take();
        }
    }

    // === streams ===

    /// Makes `tx` the session's stream and sends it the backlog.
    pub(crate) async fn open_stream(&self, tx: mpsc::Sender<Bytes>) -> Result<(), BridgeError> {
        let backlog = {
            let mut state = self.state();
            if state.ended.is_some() {
                return Err(BridgeError::SessionNotFound);
            }
            if state.stream.as_ref().is_some_and(|s| !s.is_closed()) {
                return Err(BridgeError::StreamAlreadyOpen);
            }
            state.stream = Some(tx.clone());
            state.last_active = Instant::now();
            std::mem::take(&mut state.backlog)
        };
        for message in backlog {
            if tx.send(message_event(&message)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Marks the session active now (a request ended, a stream closed).
    pub(crate) fn touch(&self) {
        self.state().last_active = Instant::now();
    }

    /// How long the session has been idle: `None` while a request waits or a stream is open.
    /// A request nobody waits for any more (its client went away) does not count.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        let state = self.state();
        let streaming = state.stream.as_ref().is_some_and(|s| !s.is_closed());
        let waiting = state.pending.values().any(|p| !p.tx.is_closed());
        (!waiting && !streaming).then(|| state.last_active.elapsed())
    }

    // === process → client ===

    /// Routes one JSON-RPC message the process wrote.
    pub(crate) async fn deliver(&self, message: Value, kind: ChildMessage) {
        enum Target {
            Request(mpsc::Sender<Delivery>, Delivery),
            Stream(mpsc::Sender<Bytes>),
            Nowhere,
        }
        let target = {
            let mut state = self.state();
            if self.transport == Transport::LegacySse {
                match &state.stream {
                    Some(stream) => Target::Stream(stream.clone()),
                    None => Target::Nowhere,
                }
            } else {
                match kind {
                    ChildMessage::Response { id_key } => match state.pending.remove(&id_key) {
                        Some(pending) => {
                            Target::Request(pending.tx, Delivery::Done(message.clone()))
                        }
                        None => {
                            tracing::debug!(session = %self.id, id = %id_key, "response to no waiting request dropped");
                            return;
                        }
                    },
                    ChildMessage::Other { progress_token } => {
                        let by_token = progress_token.and_then(|token| {
                            state
                                .pending
                                .values()
                                .find(|p| p.sse && p.progress_token.as_deref() == Some(&token))
                        });
                        let oldest = || {
                            state
                                .pending
                                .values()
                                .filter(|p| p.sse && !p.tx.is_closed())
                                .min_by_key(|p| p.seq)
                        };
                        match by_token.or_else(oldest) {
                            Some(p) => {
                                Target::Request(p.tx.clone(), Delivery::Note(message.clone()))
                            }
                            None => match &state.stream {
                                Some(s) if !s.is_closed() => Target::Stream(s.clone()),
                                _ => Target::Nowhere,
                            },
                        }
                    }
                }
            }
        };
        match target {
            Target::Request(tx, delivery) => {
                let _ = tx.send(delivery).await;
            }
            Target::Stream(tx) => {
                if tx.send(message_event(&message)).await.is_err() {
                    self.keep(message);
                }
            }
            Target::Nowhere => self.keep(message),
        }
    }

    fn keep(&self, message: Value) {
        let mut state = self.state();
        if state.backlog.len() >= self.backlog_limit {
            state.backlog.pop_front();
            tracing::debug!(session = %self.id, "backlog full: oldest message dropped");
        }
        state.backlog.push_back(message);
    }

    // === end ===

    /// Asks the supervisor to stop the process; resolves once it has ended.
    pub(crate) async fn stop(&self) {
        self.request_stop();
        self.ended().await;
    }

    /// Asks the supervisor to stop the process, without waiting (for drop guards).
    pub(crate) fn request_stop(&self) {
        let _ = self.stop_tx.send(true);
    }

    /// Resolves once the session has ended.
    pub(crate) async fn ended(&self) {
        let mut rx = self.ended_rx.clone();
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// Why the session ended (`None` while it lives).
    pub(crate) fn end_reason(&self) -> Option<String> {
        self.state().ended.clone()
    }

    /// The process is gone: waiting requests get a JSON-RPC error, the stream ends.
    pub(crate) fn end(&self, reason: String) {
        let (pending, stream) = {
            let mut state = self.state();
            state.ended = Some(reason.clone());
            (std::mem::take(&mut state.pending), state.stream.take())
        };
        for pending in pending.into_values() {
            let _ = pending.tx.try_send(Delivery::Failed(reason.clone()));
        }
        // Dropping the stream's sender ends the client's SSE stream.
        drop(stream);
    }
}

/// A message as an SSE event of type `message`.
pub(crate) fn message_event(message: &Value) -> Bytes {
    sse_event(Some("message"), &message.to_string())
}
