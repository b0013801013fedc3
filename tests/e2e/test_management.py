"""Issue 5's "Done when", as a user would do it: a standalone gateway-service (management API and
data plane on one listener, a temporary data directory), adapters created through the REST API for
@modelcontextprotocol/server-everything over stdio and for our example server with two replicas,
the official MCP Python SDK client through the gateway to both, status and logs read, the example
server scaled to 3, the gateway restarted (adapters come back as they were and serve), both
adapters deleted, and no process of theirs left.

The gateway runs in its secure default: it creates an admin API key in its data directory on first
start (admin.key), and every request of the test, REST and MCP, sends it as a bearer token; the
restarted gateway reuses the key.

Every process an adapter of this test starts carries E2E_MARK=<marker> in its environment (through
`environmentVariables`), so /proc scans find exactly them, whoever else runs example servers.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.request

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import NODE_MODULES, ROOT
from standalone import Gateway, descendants, marked, still_running, wait_gone

EVERYTHING_BIN = NODE_MODULES / ".bin" / "mcp-server-everything"
EXAMPLE_BIN = ROOT / "target" / "release" / "mcp-example-server"
TIMEOUT = 30.0


def text_of(result) -> str:
    assert not getattr(result, "is_error", False), f"tool error: {result.content}"
    return "".join(getattr(c, "text", "") for c in result.content)


async def with_sessions(url: str, n: int, work, while_open, headers: dict[str, str] | None = None):
    """n concurrent MCP sessions (session era: `initialize`) through the gateway, each in its own
    task and sending `headers` (the bearer token) on every request: each runs `work(i, client)`;
    once all have, `while_open()` runs while every session is still open; then they close.
    Returns (results of work, result of while_open)."""
    results: list = [None] * n
    finished, release = asyncio.Event(), asyncio.Event()
    count = 0

    async def one(i: int) -> None:
        nonlocal count
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT)) as http, \
                Client(streamable_http_client(url, http_client=http), mode="legacy",
                       read_timeout_seconds=TIMEOUT) as client:
            results[i] = await work(i, client)
            count += 1
            if count == n:
                finished.set()
            await release.wait()

    sessions = asyncio.gather(*(one(i) for i in range(n)))
    waiter = asyncio.ensure_future(finished.wait())
    await asyncio.wait([sessions, waiter], timeout=TIMEOUT * 4, return_when=asyncio.FIRST_COMPLETED)
    if not finished.is_set():
        waiter.cancel()
        release.set()
        await asyncio.wait_for(sessions, TIMEOUT)  # raises what went wrong
        raise AssertionError(f"{n} sessions to {url} did not all finish their work within {TIMEOUT * 4:.0f}s")
    try:
        observed = await while_open()
    finally:
        release.set()
        await asyncio.wait_for(sessions, TIMEOUT)
    return results, observed


def replica_ids(status: dict) -> set[str]:
    """What `whoami` answers for each ready replica: `p<port>` (the example server's default)."""
    return {"p" + r["url"].rsplit(":", 1)[1] for r in status["replicas"] if r["state"] == "ready"}


def use_example(gw: Gateway, sessions: int) -> tuple[set[str], dict]:
    """`sessions` concurrent sessions: tools listed, whoami, per-session counter kept across calls.
    Returns the replicas that served and the status read while every session was open."""

    async def work(n: int, c: Client) -> str:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert {"whoami", "counter_increment", "echo"} <= tools, tools
        who = text_of(await c.call_tool("whoami", {}))
        for i in (1, 2, 3):
            value = text_of(await c.call_tool("counter_increment", {}))
            assert value == f"{who}:{i}", f"session {n}: call {i} gave {value!r} (served by {who})"
        assert text_of(await c.call_tool("echo", {"text": f"hi-{n}"})) == f"hi-{n}"
        return who

    async def read_status():
        return await asyncio.to_thread(lambda: gw.api("GET", "/adapters/example/status").json())

    served, status = asyncio.run(with_sessions(gw.adapter_url("example"), sessions, work, read_status, gw.headers))
    print(f"  example: {sessions} sessions, per replica {sorted((w, served.count(w)) for w in set(served))}; "
          f"liveSessions {[(r['index'], r['liveSessions']) for r in status['replicas']]}")
    return set(served), status


def use_everything(gw: Gateway, marker: str, sessions: int) -> tuple[dict[int, str], dict]:
    """`sessions` concurrent sessions to server-everything (stdio, behind the bridge): tools listed,
    echo and get-sum called. Returns its processes and the status, both read while all were open."""

    async def work(n: int, c: Client) -> None:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert {"echo", "get-sum"} <= tools, tools
        assert f"hi-{n}" in text_of(await c.call_tool("echo", {"message": f"hi-{n}"}))
        assert "5" in text_of(await c.call_tool("get-sum", {"a": 2, "b": 3}))

    async def observe():
        procs = marked(marker, "mcp-server-everything")
        status = await asyncio.to_thread(lambda: gw.api("GET", "/adapters/everything/status").json())
        return procs, status

    _, (procs, status) = asyncio.run(with_sessions(gw.adapter_url("everything"), sessions, work, observe, gw.headers))
    print(f"  everything: {sessions} sessions in {len(procs)} processes {sorted(procs)}; "
          f"liveSessions {[(r['index'], r['liveSessions']) for r in status['replicas']]}")
    return procs, status


def live_sessions(status: dict) -> int:
    return sum(r["liveSessions"] for r in status["replicas"])


def read_first_line_of_follow(gw: Gateway, adapter: str) -> str:
    """`follow=true` streams forever: read one line, then hang up."""
    req = urllib.request.Request(f"{gw.url}/adapters/{adapter}/logs?follow=true&tail=1", headers=gw.headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        line = r.readline().decode()
        with contextlib.suppress(OSError):
            r.fp.raw._sock.shutdown(socket.SHUT_RDWR)  # don't wait for the end of a stream that has none
    return line


def test_issue5_done_when(tmp_path):
    marker = f"management-{os.getpid()}-{time.monotonic_ns()}"
    env = {"E2E_MARK": marker}
    everything = {"name": "everything", "transport": "stdio", "command": str(EVERYTHING_BIN), "args": ["stdio"],
                  "environmentVariables": env, "description": "server-everything over stdio"}
    example = {"name": "example", "command": str(EXAMPLE_BIN), "args": ["--transport", "all", "--port", "{port}"],
               "replicaCount": 2, "environmentVariables": env}
    data_dir = tmp_path / "data"
    gateways = [Gateway("gateway-management", data_dir)]
    gw = gateways[0]
    try:
        # --- create ---------------------------------------------------------------------------
        for spec in (everything, example):
            r = gw.api("POST", "/adapters", spec)
            assert r.status == 201, f"POST {spec['name']}: {r.status} {r.text}"
            assert r.headers.get("location") == f"/adapters/{spec['name']}", r.headers
            body = r.json()
            assert {k: body[k] for k in spec} == spec, body
            assert body["createdBy"] == "admin" and body["createdAt"] and body["lastUpdatedAt"], body
        r = gw.api("POST", "/adapters", example)
        assert r.status == 409 and r.headers["content-type"].startswith("application/problem+json"), (r.status, r.text)
        assert [a["name"] for a in gw.api("GET", "/adapters").json()] == ["everything", "example"]
        gw.wait_ready("example", 2)
        gw.wait_ready("everything", 1)

        # --- use both through the gateway ---------------------------------------------------------
        served, status = use_example(gw, sessions=6)
        assert served == replica_ids(status) and len(served) == 2, f"replicas used: {served}, status {status}"
        assert live_sessions(status) >= 6, f"6 sessions open, status says {status}"
        procs, status = use_everything(gw, marker, sessions=3)
        assert len(procs) >= 3, f"3 sessions open to a stdio server, {len(procs)} processes: {procs}"
        assert live_sessions(status) >= 3, f"3 sessions open, status says {status}"
        left = wait_gone(lambda: marked(marker, "mcp-server-everything"), timeout=15)
        assert not left, f"server-everything processes of closed sessions still running: {left}"
        # The SDK client ends its sessions (DELETE) when it closes: none is live any more.
        for name in ("example", "everything"):
            deadline = time.monotonic() + 10
            while (n := live_sessions(gw.api("GET", f"/adapters/{name}/status").json())) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert n == 0, f"{name}: {n} live sessions after every client closed"

        # --- logs ---------------------------------------------------------------------------------
        r = gw.api("GET", "/adapters/example/logs?tail=3")
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain"), (r.status, r.headers)
        lines = r.text.splitlines()
        assert 1 <= len(lines) <= 3 and "listening on" in gw.api("GET", "/adapters/example/logs").text, r.text
        r = gw.api("GET", "/adapters/example/logs?replica=1&tail=10", headers={"accept": "application/x-ndjson"})
        assert r.status == 200 and r.headers["content-type"].startswith("application/x-ndjson"), (r.status, r.headers)
        records = [json.loads(line) for line in r.text.splitlines()]
        assert records and all(x["replica"] == 1 and x["stream"] in ("stdout", "stderr") and x["time"] for x in records)
        print(f"  logs: {len(lines)} lines with tail=3, {len(records)} NDJSON records of replica 1; "
              f"follow=true gave {read_first_line_of_follow(gw, 'example').strip()!r}")
        assert gw.api("GET", "/adapters/everything/logs?tail=5").status == 200
        r = gw.api("GET", "/adapters/example/logs?replica=7")
        assert r.status in (400, 404), f"logs of a replica that does not exist: {r.status} {r.text}"

        # --- scale to 3 -------------------------------------------------------------------------
        r = gw.api("PUT", "/adapters/example", {**example, "replicaCount": 3})
        assert r.status == 200 and r.json()["replicaCount"] == 3, (r.status, r.text)
        status = gw.wait_ready("example", 3)
        served, status = use_example(gw, sessions=9)
        assert served == replica_ids(status) and len(served) == 3, f"replicas used: {served}, status {status}"

        # --- restart the gateway --------------------------------------------------------------
        before = {name: gw.api("GET", f"/adapters/{name}").json() for name in ("everything", "example")}
        children = descendants(gw.pid)
        code = gw.stop()
        assert code == 0, f"gateway exit code {code} on SIGTERM"
        left = wait_gone(lambda: {**still_running(children), **marked(marker)}, timeout=10)
        assert not left, f"processes left after the gateway stopped: {left}"
        key = gw.token
        gateways.append(gw := Gateway("gateway-management-2", data_dir))
        assert gw.token == key, "the restarted gateway made a new admin key instead of reusing admin.key"
        after = {a["name"]: a for a in gw.api("GET", "/adapters").json()}
        assert after == before, f"adapters after the restart differ:\nbefore {before}\nafter  {after}"
        gw.wait_ready("example", 3)
        gw.wait_ready("everything", 1)
        served, status = use_example(gw, sessions=6)
        assert served == replica_ids(status) and len(served) == 3, f"replicas used: {served}, status {status}"
        procs, status = use_everything(gw, marker, sessions=2)
        assert len(procs) >= 2 and live_sessions(status) >= 2, (procs, status)

        # --- delete -------------------------------------------------------------------------------
        for name in ("everything", "example"):
            r = gw.api("DELETE", f"/adapters/{name}")
            assert r.status == 204 and r.text == "", (name, r.status, r.text)
            r = gw.api("GET", f"/adapters/{name}")
            assert r.status == 404 and r.headers["content-type"].startswith("application/problem+json"), r.text
            assert gw.api("DELETE", f"/adapters/{name}").status == 404
        assert gw.api("GET", "/adapters").json() == []
        left = wait_gone(lambda: {pid: cmd for pid, cmd in marked(marker).items()
                                  if str(EXAMPLE_BIN) in cmd or "mcp-server-everything" in cmd}, timeout=10)
        assert not left, f"processes of deleted adapters still running: {left}"
        assert not marked(marker), f"other processes of the deleted adapters: {marked(marker)}"
        assert not list((data_dir / "adapters").glob("*")), list((data_dir / "adapters").iterdir())
        assert gw.api("GET", "/adapters/example/status").status == 404
    finally:
        for g in gateways:
            g.stop()
    left = wait_gone(lambda: marked(marker), timeout=10)
    assert not left, f"processes of the test's adapters still running after the gateway stopped: {left}"
