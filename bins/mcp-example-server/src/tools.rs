//! The tools, chosen to make routing visible: which replica served a call (`whoami`), whether
//! session state survived (`counter_increment`), streaming (`slow`) and large bodies (`big`).
//!
//! Unknown tools are protocol errors (`-32602`, as the spec's tools page shows); bad arguments
//! are tool errors (`isError: true`), as revision 2025-11-25 asks so that a model can correct them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::session::Outbound;

/// Largest `big` result, in KiB (64 MiB).
const MAX_BIG_KIB: u64 = 64 * 1024;
/// Longest `slow` call (10 minutes) and most progress steps.
const MAX_SLOW_MS: u64 = 600_000;
const MAX_SLOW_STEPS: u64 = 10_000;

/// What a tool call may use besides its arguments.
pub struct Env<'a> {
    /// The replica id this process reports.
    pub replica: &'a str,
    /// The counter of `counter_increment`: the session's, or the process-wide one when stateless.
    pub counter: &'a AtomicU64,
    /// Where `notifications/progress` go, when the request asked for them and the transport can stream.
    pub progress: Option<Progress>,
}

/// A progress token and the stream its notifications are written to.
pub struct Progress {
    pub token: Value,
    pub out: Outbound,
}

impl Progress {
    /// Sends one `notifications/progress`; `false` once the client has gone away.
    async fn report(&self, progress: u64, total: u64) -> bool {
        let note = json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": { "progressToken": self.token, "progress": progress, "total": total },
        });
        self.out.send(note).await.is_ok()
    }
}

/// The `tools/list` entries.
pub fn list() -> Value {
    json!([
        {
            "name": "whoami",
            "description": "Return the id of the replica that served this call.",
            "inputSchema": { "type": "object", "properties": {} },
        },
        {
            "name": "counter_increment",
            "description": "Increment and return a counter as \"<replica>:<n>\". The counter is kept per \
                MCP session; stateless (2026-07-28) requests have no session and share one counter per replica.",
            "inputSchema": { "type": "object", "properties": {} },
        },
        {
            "name": "echo",
            "description": "Return the text unchanged (`message` is accepted as an alias of `text`).",
            "inputSchema": {
                "type": "object",
                "properties": { "text": { "type": "string", "description": "The text to return." } },
                "required": ["text"],
            },
        },
        {
            "name": "slow",
            "description": "Wait `ms` milliseconds, sending `steps` progress notifications spread over that \
                time when the request carries a progressToken, then return \"done\".",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "ms": { "type": "integer", "minimum": 0, "maximum": MAX_SLOW_MS, "default": 1000,
                            "description": "Total duration in milliseconds." },
                    "steps": { "type": "integer", "minimum": 0, "maximum": MAX_SLOW_STEPS, "default": 5,
                               "description": "Number of progress notifications." },
                },
            },
        },
        {
            "name": "big",
            "description": "Return a text result of `kib` KiB.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "kib": { "type": "integer", "minimum": 0, "maximum": MAX_BIG_KIB,
                             "description": "Size of the text in KiB." },
                },
                "required": ["kib"],
            },
        },
    ])
}

/// Runs a tool; `Err` only for a protocol error (unknown tool, arguments not an object).
pub async fn call(name: &str, arguments: &Value, env: Env<'_>) -> Result<Value, Error> {
    let empty = Map::new();
    let args = match arguments {
        Value::Null => &empty,
        Value::Object(map) => map,
        _ => return Err(Error::InvalidParams("arguments must be an object".into())),
    };
    let outcome = match name {
        "whoami" => Ok(env.replica.to_owned()),
        "counter_increment" => {
            let n = env.counter.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(format!("{}:{n}", env.replica))
        }
        "echo" => echo(args),
        "slow" => slow(args, env.progress).await,
        "big" => big(args),
        _ => return Err(Error::InvalidParams(format!("Unknown tool: {name}"))),
    };
    Ok(match outcome {
        Ok(text) => text_result(text, false),
        Err(message) => text_result(format!("Error executing tool {name}: {message}"), true),
    })
}

fn text_result(text: String, is_error: bool) -> Value {
    json!({ "content": [{ "type": "text", "text": text }], "isError": is_error })
}

fn echo(args: &Map<String, Value>) -> Result<String, String> {
    match args.get("text").or_else(|| args.get("message")) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err("`text` must be a string".into()),
        None => Err("missing required argument `text`".into()),
    }
}

async fn slow(args: &Map<String, Value>, progress: Option<Progress>) -> Result<String, String> {
    let ms = integer(args, "ms", Some(1000), MAX_SLOW_MS)?;
    let steps = integer(args, "steps", Some(5), MAX_SLOW_STEPS)?;
    let Some(progress) = progress.filter(|_| steps > 0) else {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok("done".into());
    };
    let interval = Duration::from_millis(ms) / u32::try_from(steps).map_err(|e| e.to_string())?;
    let start = tokio::time::Instant::now();
    for step in 1..=steps {
        // Deadlines from the start, so the notifications do not drift later than `ms`.
        tokio::time::sleep_until(
            start + interval * u32::try_from(step).map_err(|e| e.to_string())?,
        )
        .await;
        if !progress.report(step, steps).await {
            return Err("client went away".into());
        }
    }
    Ok("done".into())
}

fn big(args: &Map<String, Value>) -> Result<String, String> {
    let kib = integer(args, "kib", None, MAX_BIG_KIB)?;
    let len = usize::try_from(kib * 1024).map_err(|e| e.to_string())?;
    Ok("x".repeat(len))
}

/// A non-negative integer argument no larger than `max`, or its default.
fn integer(
    args: &Map<String, Value>,
    key: &str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, String> {
    let value = match (args.get(key), default) {
        (None | Some(Value::Null), Some(default)) => default,
        (None | Some(Value::Null), None) => {
            return Err(format!("missing required argument `{key}`"));
        }
        (Some(v), _) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| format!("`{key}` must be a non-negative integer"))?,
    };
    if value > max {
        return Err(format!("`{key}` must be at most {max}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn env(counter: &AtomicU64) -> Env<'_> {
        Env {
            replica: "r1",
            counter,
            progress: None,
        }
    }

    fn text(result: &Value) -> &str {
        result["content"][0]["text"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn counter_counts_and_names_the_replica() {
        let counter = AtomicU64::new(0);
        for expected in ["r1:1", "r1:2", "r1:3"] {
            let r = call("counter_increment", &Value::Null, env(&counter))
                .await
                .unwrap();
            assert_eq!(text(&r), expected);
        }
        let r = call("whoami", &json!({}), env(&counter)).await.unwrap();
        assert_eq!(text(&r), "r1");
    }

    #[tokio::test]
    async fn echo_accepts_text_and_its_alias() {
        let counter = AtomicU64::new(0);
        let r = call("echo", &json!({ "text": "hi" }), env(&counter))
            .await
            .unwrap();
        assert_eq!((text(&r), r["isError"].as_bool()), ("hi", Some(false)));
        let r = call("echo", &json!({ "message": "yo" }), env(&counter))
            .await
            .unwrap();
        assert_eq!(text(&r), "yo");
    }

    #[tokio::test]
    async fn bad_arguments_are_tool_errors_and_unknown_tools_protocol_errors() {
        let counter = AtomicU64::new(0);
        let r = call("echo", &json!({}), env(&counter)).await.unwrap();
        assert_eq!(r["isError"], true);
        let r = call("big", &json!({ "kib": -1 }), env(&counter))
            .await
            .unwrap();
        assert_eq!(r["isError"], true);
        let r = call("big", &json!({ "kib": MAX_BIG_KIB + 1 }), env(&counter))
            .await
            .unwrap();
        assert_eq!(r["isError"], true);
        assert!(matches!(
            call("nope", &json!({}), env(&counter)).await,
            Err(Error::InvalidParams(_))
        ));
        assert!(matches!(
            call("echo", &json!([1]), env(&counter)).await,
            Err(Error::InvalidParams(_))
        ));
    }

    #[tokio::test]
    async fn big_returns_that_many_kib() {
        let counter = AtomicU64::new(0);
        let r = call("big", &json!({ "kib": 3 }), env(&counter))
            .await
            .unwrap();
        assert_eq!(text(&r).len(), 3 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_spreads_its_progress_over_the_duration() {
        let (out, mut rx) = mpsc::channel(16);
        let progress = Some(Progress {
            token: json!("t"),
            out,
        });
        let start = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            let counter = AtomicU64::new(0);
            call(
                "slow",
                &json!({ "ms": 400, "steps": 4 }),
                Env {
                    replica: "r",
                    counter: &counter,
                    progress,
                },
            )
            .await
        });
        for step in 1..=4u64 {
            let note = rx.recv().await.unwrap();
            assert_eq!(note["params"]["progress"], step);
            assert_eq!(note["params"]["progressToken"], "t");
            assert_eq!(start.elapsed(), Duration::from_millis(100 * step));
        }
        let r = task.await.unwrap().unwrap();
        assert_eq!(text(&r), "done");
    }

    #[test]
    fn every_tool_has_an_object_input_schema() {
        for tool in list().as_array().unwrap() {
            assert_eq!(tool["inputSchema"]["type"], "object", "{}", tool["name"]);
        }
    }
}
