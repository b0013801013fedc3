//! Replica output: a bounded ring of lines per replica, and followers of new lines.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures_util::StreamExt;
use mcp_gateway_core::{LogLine, LogQuery, LogStream, rfc3339};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::broadcast;

/// Longest line kept; longer output is split into several lines.
const MAX_LINE: usize = 16 * 1024;
/// New lines a slow follower may fall behind by before it skips some.
const FOLLOW_BUFFER: usize = 1024;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    Stdout,
    Stderr,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    replica: u32,
    source: Source,
    time: SystemTime,
    line: Arc<str>,
}

impl Entry {
    fn to_line(&self) -> LogLine {
        LogLine {
            replica: self.replica,
            stream: self.source.as_str().to_owned(),
            time: rfc3339(self.time),
            line: self.line.to_string(),
        }
    }
}

#[derive(Debug, Default)]
struct Rings {
    seq: u64,
    per_replica: BTreeMap<u32, VecDeque<Entry>>,
}

/// The output of every replica of one adapter. Lines of a replica ordinal are kept across its
/// restarts and replacements, so the lines before a crash can still be read.
#[derive(Debug)]
pub(crate) struct AdapterLogs {
    capacity: usize,
    rings: Mutex<Rings>,
    new_lines: broadcast::Sender<Entry>,
}

impl AdapterLogs {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            rings: Mutex::default(),
            new_lines: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    /// Records one line of a replica, cut to [`MAX_LINE`] bytes (whoever wrote it: the pump
    /// splits long output, but a stdio bridge hands whole lines over).
    pub(crate) fn push(&self, replica: u32, source: Source, line: &str) {
        let line = capped(line);
        // Not to `tracing`: replicas print their environment and requests, secrets included,
        // and only the adapter's writers may read them (through the logs endpoint).
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.seq += 1;
        let entry = Entry {
            seq: rings.seq,
            replica,
            source,
            time: SystemTime::now(),
            line: line.into(),
        };
        let ring = rings.per_replica.entry(replica).or_default();
        if ring.len() >= self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry.clone());
        // Sent under the lock, so a follower subscribing under it neither misses nor repeats.
        let _ = self.new_lines.send(entry);
    }

    /// Whether any line of this replica is kept.
    pub(crate) fn has_replica(&self, replica: u32) -> bool {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        rings.per_replica.contains_key(&replica)
    }

    /// The kept lines the query selects, then (if it follows) new ones until the stream is
    /// dropped or the adapter is removed.
    pub(crate) fn stream(&self, query: &LogQuery) -> LogStream {
        let selected = |e: &Entry| {
            query.replica.is_none_or(|r| r == e.replica) && query.since.is_none_or(|t| e.time >= t)
        };
        let (backlog, follower) = {
            let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
            let mut backlog: Vec<Entry> = rings
                .per_replica
                .values()
                .flatten()
                .filter(|e| selected(e))
                .cloned()
                .collect();
            backlog.sort_by_key(|e| e.seq);
            if let Some(tail) = query.tail {
                backlog.drain(..backlog.len().saturating_sub(tail));
            }
            (backlog, query.follow.then(|| self.new_lines.subscribe()))
        };
        let backlog = futures_util::stream::iter(backlog.into_iter().map(|e| e.to_line()));
        let Some(follower) = follower else {
            return Box::pin(backlog);
        };
        let replica = query.replica;
        let new_lines = futures_util::stream::unfold(follower, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) if replica.is_none_or(|r| r == e.replica) => {
                        return Some((e.to_line(), rx));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Box::pin(backlog.chain(new_lines))
    }
}

/// `line`, or its first [`MAX_LINE`] bytes (at a character boundary) and how much was cut.
fn capped(line: &str) -> std::borrow::Cow<'_, str> {
    if line.len() <= MAX_LINE {
        return line.into();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} [{} more bytes cut]", &line[..end], line.len() - end).into()
}

/// Reads `reader` line by line into `logs` until end of file.
pub(crate) async fn pump(
    mut reader: impl AsyncBufRead + Unpin,
    logs: Arc<AdapterLogs>,
    replica: u32,
    source: Source,
) {
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(buf) => buf,
            Err(err) => {
                tracing::debug!(replica, error = %err, "replica output unreadable");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let (take, complete) = match buf.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len().min(room), buf.len() >= room),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if complete {
            emit(&logs, replica, source, &mut line);
        }
    }
    if !line.is_empty() {
        emit(&logs, replica, source, &mut line);
    }
}

fn emit(logs: &AdapterLogs, replica: u32, source: Source, line: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    logs.push(replica, source, text);
    line.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn logs(capacity: usize) -> Arc<AdapterLogs> {
        Arc::new(AdapterLogs::new(capacity))
    }

    #[tokio::test]
    async fn a_long_line_handed_over_whole_is_cut_to_the_cap() {
        let logs = logs(10);
        let huge = "é".repeat(MAX_LINE); // 2 bytes each: twice the cap
        logs.push(0, Source::Stderr, &huge);
        logs.push(0, Source::Stderr, "short");
        let lines = collect(&logs, LogQuery::default()).await;
        assert!(lines[0].1.len() < MAX_LINE + 64, "{}", lines[0].1.len());
        assert!(
            lines[0]
                .1
                .ends_with(&format!(" [{} more bytes cut]", MAX_LINE)),
            "{}",
            &lines[0].1[MAX_LINE - 10..]
        );
        assert_eq!(lines[1].1, "short");
    }

    async fn collect(logs: &AdapterLogs, query: LogQuery) -> Vec<(u32, String)> {
        logs.stream(&query)
            .map(|l| (l.replica, l.line))
            .collect()
            .await
    }

    #[tokio::test]
    async fn rings_keep_the_newest_lines_per_replica() {
        let logs = logs(3);
        for i in 0..5 {
            logs.push(0, Source::Stdout, &format!("zero {i}"));
        }
        logs.push(1, Source::Stderr, "one");
        let lines = collect(&logs, LogQuery::default()).await;
        assert_eq!(
            lines,
            [
                (0, "zero 2".into()),
                (0, "zero 3".into()),
                (0, "zero 4".into()),
                (1, "one".into())
            ]
        );
        let tail = collect(
            &logs,
            LogQuery {
                replica: Some(0),
                tail: Some(1),
                ..LogQuery::default()
            },
        )
        .await;
        assert_eq!(tail, [(0, "zero 4".into())]);
    }

    #[tokio::test]
    async fn since_selects_lines_written_at_or_after_the_time() {
        let logs = logs(10);
        logs.push(0, Source::Stdout, "old");
        let cut = SystemTime::now() + Duration::from_millis(5);
        tokio::time::sleep(Duration::from_millis(20)).await;
        logs.push(0, Source::Stdout, "new");
        let query = LogQuery {
            since: Some(cut),
            ..LogQuery::default()
        };
        assert_eq!(collect(&logs, query).await, [(0, "new".into())]);
    }

    #[tokio::test]
    async fn followers_get_new_lines_of_their_replica_and_end_when_the_logs_go() {
        let logs = logs(10);
        logs.push(0, Source::Stdout, "before");
        let mut stream = logs.stream(&LogQuery {
            replica: Some(0),
            follow: true,
            ..LogQuery::default()
        });
        assert_eq!(stream.next().await.unwrap().line, "before");
        logs.push(1, Source::Stdout, "other replica");
        logs.push(0, Source::Stderr, "after");
        let line = stream.next().await.unwrap();
        assert_eq!(
            (line.line.as_str(), line.stream.as_str()),
            ("after", "stderr")
        );
        drop(logs);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn pump_splits_lines_strips_line_ends_and_caps_long_lines() {
        let logs = logs(10);
        let mut input = b"first\r\nsecond\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        input.extend_from_slice(b"\nno newline \xff");
        pump(&input[..], logs.clone(), 0, Source::Stdout).await;
        let lines = collect(&logs, LogQuery::default()).await;
        let lens: Vec<_> = lines.iter().map(|(_, l)| l.len()).collect();
        assert_eq!(lines[0].1, "first");
        assert_eq!(lines[1].1, "second");
        assert_eq!(lens[2..4], [MAX_LINE, 10]);
        assert_eq!(lines[4].1, "no newline \u{fffd}");
    }
}
