#!/usr/bin/env python3
"""Drive concurrent MCP sessions through a URL with the official Python SDK client.

Each session connects (mode legacy, auto or 2026-07-28), lists tools, calls counter_increment
CALLS times, echo once and whoami once (tools of replica_server.py). In the session era a session
passes when the counter goes 1, 2, 3, ... (its state was not lost) and one replica served all of
it; in the stateless era (2026-07-28) each call may reach any replica, so only results are checked.

When a session fails with an error other than a timeout (e.g. 404 "Session terminated" after its
replica died) it re-initializes and starts over, up to --retries times. Every call has a timeout
(--timeout); a call that hits it is counted as a timeout and fails the run.

  sessions.py URL [--transport http|sse] [--mode legacy|auto|2026-07-28] [--sessions N]
                  [--calls K] [--pause S] [--retries R] [--timeout S] [--expect-replicas a,b]
                  [--token KEY]

--token (or MCP_GATEWAY_TOKEN) is sent as `Authorization: Bearer KEY` on every request.

URL is the streamable HTTP endpoint (.../mcp) or, with --transport sse, the SSE endpoint (.../sse).
Prints a summary and ends with 'N passed, M failed'; exits non-zero on any failure.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import sys
import time

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import REQUEST_TIMEOUT


@dataclasses.dataclass
class Options:
    url: str
    transport: str = "http"
    mode: str = "legacy"
    sessions: int = 10
    calls: int = 5
    pause: float = 0.0
    retries: int = 0
    timeout: float = 15.0
    headers: dict[str, str] | None = None  # sent on every HTTP request, e.g. Authorization


@dataclasses.dataclass
class Report:
    sessions: int = 0
    passed: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    timeouts: list[str] = dataclasses.field(default_factory=list)
    reconnects: int = 0
    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # replica -> calls served
    final: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # replica -> sessions finished
    reconnected_final: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    versions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # why sessions reconnected
    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # HTTP status -> responses
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return self.sessions - self.passed

    def summary(self) -> str:
        return (
            f"sessions={self.sessions} passed={self.passed} failed={self.failed} timeouts={len(self.timeouts)} "
            f"reconnects={self.reconnects} calls_per_replica={dict(sorted(self.calls.items()))} "
            f"sessions_per_replica={dict(sorted(self.final.items()))} versions={dict(self.versions)} "
            f"http_statuses={dict(sorted(self.statuses.items()))} "
            f"in {self.seconds:.1f}s" + (f" reconnect_reasons={dict(self.reasons)}" if self.reasons else "")
        )


class SessionBroken(Exception):
    """A wrong result: the session's state was lost or it moved between replicas. Not retried."""


def text_of(result) -> str:
    if getattr(result, "is_error", False):
        raise MCPError(code=-1, message=f"tool error: {result.content}")
    return "".join(getattr(c, "text", "") for c in result.content)


def leaves(e: BaseException) -> list[BaseException]:
    """The leaf exceptions of an exception group (anyio task groups wrap errors in groups)."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in leaves(sub)]
    return [e]


def is_timeout(e: BaseException) -> bool:
    """A client-side timeout. (Servers also answer -32001 for "session not found": the message tells them apart.)"""
    return any(
        isinstance(x, (TimeoutError, httpx2.TimeoutException))
        or (isinstance(x, MCPError) and x.code == REQUEST_TIMEOUT and "timed out" in x.message)
        for x in leaves(e)
    )


def describe(e: BaseException) -> str:
    return "; ".join(f"{type(x).__name__}: {x}" for x in leaves(e))[:300]


async def attempt(opts: Options, n: int, report: Report) -> str:
    """One MCP session from connect to close; returns the replica that served it (or 'stateless')."""

    async def count_status(response: httpx2.Response) -> None:
        report.statuses[response.status_code] += 1

    def http_client(headers=None, timeout=None, auth=None) -> httpx2.AsyncClient:
        timeout = timeout or httpx2.Timeout(opts.timeout)
        return httpx2.AsyncClient(headers={**(opts.headers or {}), **(headers or {})}, timeout=timeout, auth=auth,
                                  event_hooks={"response": [count_status]})

    async with contextlib.AsyncExitStack() as stack:
        if opts.transport == "sse":
            transport = sse_client(opts.url, timeout=opts.timeout, sse_read_timeout=opts.timeout * 4,
                                   httpx_client_factory=http_client)
        else:
            transport = streamable_http_client(opts.url, http_client=await stack.enter_async_context(http_client()))
        client = await stack.enter_async_context(Client(transport, mode=opts.mode, read_timeout_seconds=opts.timeout))
        version = client.protocol_version
        report.versions[version] += 1
        stateless = version >= "2026"
        if (opts.mode == "legacy" and stateless) or (opts.mode.startswith("20") and not stateless):
            raise SessionBroken(f"mode {opts.mode} negotiated protocol {version}")
        tools = {t.name for t in (await client.list_tools()).tools}
        if not {"whoami", "counter_increment", "echo"} <= tools:
            raise SessionBroken(f"tools missing, got {sorted(tools)}")
        seen: list[str] = []
        for i in range(1, opts.calls + 1):
            value = text_of(await client.call_tool("counter_increment", {}))
            replica, _, count = value.rpartition(":")
            seen.append(replica)
            report.calls[replica] += 1
            if not replica or not count.isdigit():
                raise SessionBroken(f"call {i}: bad counter value {value!r}")
            if not stateless and count != str(i):
                raise SessionBroken(f"call {i} returned {value!r}: session state was lost")
            if opts.pause:
                await asyncio.sleep(opts.pause)
        word = f"hello-{n}"
        if (echoed := text_of(await client.call_tool("echo", {"text": word}))) != word:
            raise SessionBroken(f"echo returned {echoed!r}, expected {word!r}")
        who = text_of(await client.call_tool("whoami", {}))
        seen.append(who)
        report.calls[who] += 1
        if not stateless and len(set(seen)) != 1:
            raise SessionBroken(f"served by several replicas {sorted(set(seen))}")
        return "stateless" if stateless else who


async def session(opts: Options, n: int, report: Report) -> None:
    deadline = opts.timeout * (opts.calls + 6)  # a hang anywhere (connect, close) is caught too
    for try_no in range(opts.retries + 1):
        try:
            replica = await asyncio.wait_for(attempt(opts, n, report), deadline)
        except SessionBroken as e:
            report.failures.append(f"session {n}: {e}")
            return
        except Exception as e:  # noqa: BLE001 - every other failure is reported or retried
            if is_timeout(e):
                report.timeouts.append(f"session {n} try {try_no}: {describe(e)}")
            if try_no == opts.retries:
                report.failures.append(f"session {n}: failed after {try_no + 1} tries: {describe(e)}")
                return
            report.reconnects += 1
            report.reasons[describe(e)[:120]] += 1
            continue
        report.passed += 1
        report.final[replica] += 1
        if try_no:
            report.reconnected_final[replica] += 1
        return


async def run(opts: Options, report: Report | None = None) -> Report:
    """Run opts.sessions sessions concurrently; fill `report` (watchable while it runs) and return it."""
    report = report or Report()
    report.sessions = opts.sessions
    start = time.monotonic()
    await asyncio.gather(*(session(opts, n, report) for n in range(opts.sessions)))
    report.seconds = time.monotonic() - start
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--transport", choices=["http", "sse"], default="http")
    p.add_argument("--mode", default="legacy", help="legacy | auto | 2026-07-28")
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--calls", type=int, default=5, help="counter_increment calls per session")
    p.add_argument("--pause", type=float, default=0.0, help="seconds between calls")
    p.add_argument("--retries", type=int, default=0, help="re-initializations allowed per session")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds allowed per call")
    p.add_argument("--expect-replicas", default="", help="comma-separated replicas that must each serve calls")
    p.add_argument("--token", default=os.environ.get("MCP_GATEWAY_TOKEN"),
                   help="API key or JWT sent as Authorization: Bearer (default: $MCP_GATEWAY_TOKEN)")
    a = p.parse_args()
    a.headers = {"Authorization": f"Bearer {a.token}"} if a.token else None
    opts = Options(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Options)})
    report = asyncio.run(run(opts))
    problems = report.failures + report.timeouts
    expected = [r for r in a.expect_replicas.split(",") if r]
    if unused := [r for r in expected if not report.calls[r]]:
        problems.append(f"replicas {unused} served no call (calls per replica: {dict(report.calls)})")
    for line in problems[:20]:
        print("FAIL", line, file=sys.stderr)
    print(report.summary())
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
