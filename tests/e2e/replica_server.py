#!/usr/bin/env python3
"""One replica of a test MCP server, on the official Python SDK (`mcp`).

Its tools let a test see which replica served a call and whether per-session state survived:
  whoami                 -> this replica's id
  counter_increment      -> "<replica>:<n>", n counting calls in this MCP session on this replica
  echo(text)             -> text
  slow(ms, steps=10)     -> sleeps ms milliseconds in `steps` steps, sending a progress notification
                            after each, then returns
  big(kib)               -> a text result of kib KiB
  caller                 -> JSON of the identity headers of the call's HTTP request: X-Mcp-UserId,
                            X-Mcp-Roles and Authorization (null when absent)

usage: replica_server.py --port PORT [--transport streamable-http|sse] [--replica ID]
Endpoints: streamable-http on /mcp (both protocol eras); sse on /sse + /messages/.
"""
import argparse
import json

import anyio
from mcp.server.mcpserver import Context, MCPServer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
parser.add_argument("--replica", help="replica id reported by the tools (default: p<port>)")
args = parser.parse_args()
replica = args.replica or f"p{args.port}"

server = MCPServer("e2e-replica", log_level="WARNING")
counters: dict[object, int] = {}


def session_key(ctx: Context) -> object:
    """The MCP session of a request: Mcp-Session-Id (streamable HTTP), session_id (SSE), else the connection."""
    headers = ctx.headers or {}
    request = ctx.request_context.request
    query = getattr(request, "query_params", None) or {}
    return headers.get("mcp-session-id") or query.get("session_id") or id(ctx.session)


@server.tool()
def whoami() -> str:
    """Return the id of the replica that served this call."""
    return replica


@server.tool()
def counter_increment(ctx: Context) -> str:
    """Increment the counter of this MCP session on this replica; return "<replica>:<count>"."""
    key = session_key(ctx)
    counters[key] = counters.get(key, 0) + 1
    return f"{replica}:{counters[key]}"


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
async def slow(ms: int, ctx: Context, steps: int = 10) -> str:
    """Sleep ms milliseconds in `steps` equal steps, reporting progress after each, then return."""
    steps = max(1, steps)
    for step in range(1, steps + 1):
        await anyio.sleep(ms / 1000 / steps)
        await ctx.report_progress(step, steps, f"step {step}/{steps}")
    return f"slept {ms} ms on {replica}"


@server.tool()
def big(kib: int) -> str:
    """Return a text result of kib KiB (at most 64 MiB)."""
    return "x" * (1024 * max(0, min(kib, 65536)))


@server.tool()
def caller(ctx: Context) -> str:
    """Return, as JSON, the identity headers the gateway sent with this call's HTTP request."""
    headers = ctx.headers or {}
    return json.dumps({name: headers.get(name) for name in ("x-mcp-userid", "x-mcp-roles", "authorization")})


if __name__ == "__main__":
    server.run(args.transport, host=args.host, port=args.port)
