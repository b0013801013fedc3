//! The stdio transport: newline-delimited JSON-RPC on stdin/stdout, one session for the
//! process lifetime. `initialize` runs before the next line is read, other requests run
//! concurrently; one writer task owns the output, so lines never
//! interleave. A request carrying a 2026-07-28 envelope in `params._meta` is served statelessly.

use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::protocol::{self, Message, Server};
use crate::session::Session;

/// Serves `input` until it ends and every request has been answered.
pub async fn serve<R, W>(server: Arc<Server>, input: R, output: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::detached();
    let (tx, rx) = mpsc::channel::<Value>(64);
    let writer = tokio::spawn(write_lines(rx, output));
    let mut input = BufReader::new(input);
    let mut line = Vec::new();
    let mut requests = JoinSet::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = match Message::parse(&line) {
            Ok(Message::Request(request)) => request,
            Ok(Message::Notification { method }) => {
                tracing::debug!(%method, "notification");
                continue;
            }
            Ok(Message::Response) => continue,
            Err(err) => {
                let _ = tx.send(err.to_response(None)).await;
                continue;
            }
        };
        let scope = match protocol::scope_for(&request, &session) {
            Ok(scope) => scope,
            Err(err) => {
                let _ = tx.send(err.to_response(Some(&request.id))).await;
                continue;
            }
        };
        if request.method == "initialize" {
            // The handshake settles the session before anything read after it runs.
            let _ = tx.send(server.handle(&request, &scope, None).await).await;
            continue;
        }
        let (server, tx) = (server.clone(), tx.clone());
        requests.spawn(async move {
            let response = server.handle(&request, &scope, Some(tx.clone())).await;
            let _ = tx.send(response).await;
        });
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    drop(tx);
    writer.await.map_err(std::io::Error::other)?
}

async fn write_lines<W: AsyncWrite + Unpin>(
    mut rx: mpsc::Receiver<Value>,
    mut output: W,
) -> std::io::Result<()> {
    while let Some(message) = rx.recv().await {
        let mut line = serde_json::to_vec(&message)?;
        line.push(b'\n');
        output.write_all(&line).await?;
        output.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &str) -> Vec<Value> {
        let server = Arc::new(Server::new("pid1".into()));
        let (client, server_end) = tokio::io::duplex(64 * 1024);
        let input = input.as_bytes().to_vec();
        serve(server, &input[..], server_end).await.unwrap();
        let mut out = String::new();
        let mut client = client;
        tokio::io::AsyncReadExt::read_to_string(&mut client, &mut out)
            .await
            .unwrap();
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn one_session_per_process_and_errors_for_garbage() {
        let out = run(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}"#, "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#, "\n",
            "\n",
            "not json\n",
        ))
        .await;
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .any(|m| m["result"]["protocolVersion"] == "2025-06-18")
        );
        assert!(out.iter().any(|m| m["error"]["code"] == -32700));
    }

    #[tokio::test]
    async fn the_counter_continues_across_requests() {
        let call = r#"{"jsonrpc":"2.0","id":ID,"method":"tools/call","params":{"name":"counter_increment"}}"#;
        let out = run(&format!(
            "{}\n{}\n",
            call.replace("ID", "1"),
            call.replace("ID", "2")
        ))
        .await;
        let mut texts: Vec<_> = out
            .iter()
            .map(|m| m["result"]["content"][0]["text"].clone())
            .collect();
        texts.sort_by_key(|t| t.to_string());
        assert_eq!(texts, ["pid1:1", "pid1:2"]);
    }

    #[tokio::test]
    async fn stateless_requests_are_checked_and_stamped() {
        let out = run(concat!(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#, "\n",
        ))
        .await;
        assert_eq!(out[0]["result"]["resultType"], "complete");
        let out = run(concat!(
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}}}"#, "\n",
        ))
        .await;
        assert_eq!(out[0]["error"]["code"], -32022);
    }
}
