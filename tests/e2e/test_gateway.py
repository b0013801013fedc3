"""End-to-end tests of gateway-service with real MCP servers and the official clients.

Run with tests/e2e/setup.sh done and the gateway built (`cargo xtask e2e` does both):
    target/e2e/venv/bin/python -m pytest tests/e2e -v -s
Fixtures (conftest.py) start 2 streamable-HTTP replicas, 2 HTTP+SSE replicas, 2 more streamable-HTTP
replicas for the failover test, server-everything, the conformance fixture (conformance_fixture.mjs), a
gateway requiring an API key with one adapter for each group of replicas (every client here sends the
key), and a gateway with auth off (loopback only) for the official conformance suite, whose runner
cannot send an Authorization header: it fronts server-everything and the conformance fixture.
"""
from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import re
import shutil
import subprocess
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

import sessions
from conftest import E2E, NODE22, NODE_MODULES, http_get

SESSION_ERA = "2025"  # every session-era revision starts with 2024 or 2025
SDK_TIMEOUT = httpx2.Timeout(30, read=300)  # the SDK's own client's, for clients made here to send the key


def run_sessions(stack, **kw) -> sessions.Report:
    report = asyncio.run(sessions.run(sessions.Options(headers=stack.headers, **kw)))
    print(f"\n  {report.summary()}")
    for line in report.failures[:10] + report.timeouts[:10]:
        print(f"  FAIL {line}")
    return report


def assert_all_passed(report: sessions.Report) -> None:
    assert not report.timeouts, f"{len(report.timeouts)} calls hit their timeout: {report.timeouts[:3]}"
    assert report.failed == 0, f"{report.failed} sessions failed: {report.failures[:5]}"


# === streamable HTTP ===


def test_streamable_http_sessions_keep_state_on_one_replica(stack):
    report = run_sessions(stack, url=stack.adapter_url("replicas"), mode="legacy", sessions=40, calls=5)
    assert_all_passed(report)
    assert all(v < "2026" for v in report.versions), report.versions
    assert report.calls["http-a"] and report.calls["http-b"], f"load not spread: {report.calls}"
    assert set(report.final) == {"http-a", "http-b"}, f"sessions per replica: {report.final}"


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
def test_streamable_http_stateless_requests_reach_any_replica(stack, mode):
    report = run_sessions(stack, url=stack.adapter_url("replicas"), mode=mode, sessions=40, calls=5)
    assert_all_passed(report)
    assert set(report.versions) == {"2026-07-28"}, report.versions
    assert report.calls["http-a"] and report.calls["http-b"], f"load not spread: {report.calls}"


# === legacy HTTP+SSE ===


def test_http_sse_sessions_keep_state_on_one_replica(stack):
    report = run_sessions(stack, url=stack.adapter_url("sse-replicas", "sse"), transport="sse", sessions=30, calls=5)
    assert_all_passed(report)
    assert set(report.final) == {"sse-a", "sse-b"}, f"sessions per replica: {report.final}"


# === failover ===


def test_sessions_on_a_killed_replica_reinitialize_on_the_other(stack):
    victim, survivor = stack.replicas["failover"]

    async def scenario() -> sessions.Report:
        opts = sessions.Options(url=stack.adapter_url("failover"), mode="legacy", sessions=20, calls=40,
                                pause=0.05, retries=3, timeout=10, headers=stack.headers)
        report = sessions.Report()
        run = asyncio.create_task(sessions.run(opts, report))
        # Kill once both replicas serve sessions mid-way (each session makes 40 calls, about 2 s).
        while min(report.calls[victim.name], report.calls[survivor.name]) < 40 and not run.done():
            await asyncio.sleep(0.05)
        victim.proc.kill()
        print(f"\n  SIGKILLed {victim.name} after {time.monotonic() - start:.1f} s, calls so far {dict(report.calls)}")
        return await run

    start = time.monotonic()
    report = asyncio.run(scenario())
    print(f"  {report.summary()}")
    assert_all_passed(report)
    assert report.calls[victim.name] > 0, "the killed replica served nothing before it died"
    assert report.reconnects > 0, "no session noticed the replica dying"
    assert report.statuses[404] > 0, f"no session got 404 after its replica died: {dict(report.statuses)}"
    assert set(report.reconnected_final) == {survivor.name}, \
        f"re-initialized sessions finished on {dict(report.reconnected_final)}, expected only {survivor.name}"
    assert time.monotonic() - start < 60


# === streaming ===


@pytest.mark.parametrize("transport,mode", [("http", "legacy"), ("http", "2026-07-28"), ("sse", "legacy")])
def test_progress_notifications_stream_through_unbuffered(stack, transport, mode):
    """slow(2000 ms, 4 steps) sends progress every 500 ms: each must arrive when sent, not with the result."""
    url = stack.adapter_url("sse-replicas", "sse") if transport == "sse" else stack.adapter_url("replicas")

    async def call() -> tuple[list[float], float]:
        seen: list[float] = []

        async def on_progress(progress, total, message):
            seen.append(time.monotonic() - start)

        async with httpx2.AsyncClient(headers=stack.headers, timeout=SDK_TIMEOUT) as http:
            connect = (sse_client(url, headers=stack.headers) if transport == "sse"
                       else streamable_http_client(url, http_client=http))
            async with Client(connect, mode=mode, read_timeout_seconds=15) as c:
                start = time.monotonic()
                result = await c.call_tool("slow", {"ms": 2000, "steps": 4}, progress_callback=on_progress)
                assert result.content[0].text.startswith("slept 2000 ms")
                return seen, time.monotonic() - start

    seen, total = asyncio.run(call())
    print(f"\n  progress at {[round(t, 2) for t in seen]} s, result at {total:.2f} s")
    assert len(seen) == 4, f"expected 4 progress notifications, got {len(seen)}"
    assert seen[0] < 1.2 and total - seen[0] > 1.0, "progress was held back until the result: the stream is buffered"
    assert all(b - a > 0.25 for a, b in zip(seen, seen[1:])), f"progress arrived in bursts: {seen}"


def test_large_result_arrives_intact(stack):
    async def call() -> str:
        async with httpx2.AsyncClient(headers=stack.headers, timeout=SDK_TIMEOUT) as http:
            transport = streamable_http_client(stack.adapter_url("replicas"), http_client=http, max_sse_event_size=None)
            async with Client(transport, mode="legacy", read_timeout_seconds=30) as c:
                return (await c.call_tool("big", {"kib": 8192})).content[0].text

    text = asyncio.run(call())
    assert len(text) == 8192 * 1024 and set(text) == {"x"}


# === admin listener ===


def test_metrics_count_requests_per_adapter(stack):
    run_sessions(stack, url=stack.adapter_url("replicas"), mode="legacy", sessions=1, calls=1)
    status, body = http_get(f"{stack.admin}/metrics")
    assert status == 200, f"/metrics answered {status}"
    ours = [line for line in body.splitlines() if line.startswith("mcp_gateway_")]
    requests = [line for line in ours if line.startswith("mcp_gateway_requests_total") and '"replicas"' in line]
    print(f"\n  {len(ours)} mcp_gateway_ sample lines; requests_total for adapter 'replicas':")
    print("\n".join(f"    {line}" for line in requests[:8]))
    assert requests, "no mcp_gateway_requests_total line for adapter 'replicas':\n" + "\n".join(ours[:40])


# === official conformance suite ===
#
# The suite's runner (`conformance server --url`) has no option to send headers, so it runs against
# the stack's second gateway, started with `insecure_no_auth = true` on loopback: what is compared is
# proxying, and authentication is covered by test_auth.py.


@dataclasses.dataclass
class Conformance:
    """One run of the official suite's server scenarios (`--suite all`)."""

    scenarios: int  # how many the suite said it would run
    passing: set[str]  # no check FAILURE
    failing: set[str]
    checks: dict[str, list[tuple[str, str]]]  # scenario -> sorted (check id, status) of its non-INFO checks

    def warnings(self) -> list[str]:
        return [f"{s}/{c}" for s, cs in sorted(self.checks.items()) for c, status in cs if status == "WARNING"]


def conformance(url: str, out_name: str) -> Conformance:
    out = E2E / "conformance" / out_name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cli = NODE_MODULES / "@modelcontextprotocol/conformance/dist/index.js"
    with open(out / "run.log", "wb") as log:  # exits non-zero when any scenario fails: judged below
        subprocess.run([NODE22, cli, "server", "--url", url, "--suite", "all", "-o", out], stdout=log,
                       stderr=subprocess.STDOUT, timeout=600, check=False)
    announced = re.search(r"Running all suite \((\d+) scenarios\)", (out / "run.log").read_text(errors="replace"))
    result = Conformance(int(announced.group(1)) if announced else 0, set(), set(), {})
    for f in glob.glob(str(out / "server-*" / "checks.json")):
        name = re.sub(r"^server-(.*)-\d{4}-\d\d-\d\dT.*$", r"\1", f.split("/")[-2])
        checks = json.load(open(f))
        (result.failing if any(c.get("status") == "FAILURE" for c in checks) else result.passing).add(name)
        result.checks[name] = sorted((c["id"], c["status"]) for c in checks if c.get("status") != "INFO")
    return result


def test_conformance_fixture_passes_every_scenario_directly_and_through_gateway(stack):
    """conformance_fixture.mjs implements every fixture the suite's server scenarios use, so directly
    all scenarios pass, and through the gateway the results must be the same, check by check
    (a WARNING the server does not cause, such as a lost stream resumption, counts as a difference).
    No allow-list: the fixture enforces DNS-rebinding protection itself, as the gateway does."""
    direct = conformance(stack.fixture, "fixture-direct")
    via = conformance(stack.open_adapter_url("conformance"), "fixture-gateway")
    print(f"\n  fixture direct:      {len(direct.passing)}/{direct.scenarios} scenarios passed, "
          f"warnings {direct.warnings()}")
    print(f"  through the gateway: {len(via.passing)}/{via.scenarios} scenarios passed, warnings {via.warnings()}")
    assert direct.scenarios >= 30, f"the suite announced {direct.scenarios} scenarios: is it set up?"
    assert len(direct.passing) == direct.scenarios and not direct.failing, \
        f"the fixture fails directly: {sorted(direct.failing)} (see target/e2e/conformance/fixture-direct)"
    assert via.passing == direct.passing, \
        f"fail through the gateway: {sorted(direct.passing - via.passing)}; only through it: {sorted(via.passing - direct.passing)}"
    differ = {s: (direct.checks[s], via.checks.get(s)) for s in direct.checks if direct.checks[s] != via.checks.get(s)}
    assert not differ, f"check results differ (direct, gateway): {differ}"


# server-everything lacks most fixtures (most scenarios fail even directly) and does not validate
# Host/Origin; the gateway does (DNS-rebinding protection), so that scenario may pass only through it.
ENFORCED_BY_GATEWAY = {"dns-rebinding-protection"}


def test_server_everything_conformance_same_direct_and_through_gateway(stack):
    """A second, independent server implementation (different session and error behaviour)."""
    direct = conformance(stack.everything, "everything-direct")
    via = conformance(stack.open_adapter_url("everything"), "everything-gateway")
    print(f"\n  server-everything direct: {len(direct.passing)}/{direct.scenarios} passed")
    print(f"  through the gateway:      {len(via.passing)}/{via.scenarios} passed")
    print(f"  passing only through the gateway: {sorted(via.passing - direct.passing)}")
    assert direct.passing, "no scenario passed directly: is the suite set up?"
    assert not direct.passing - via.passing, f"pass directly but fail through the gateway: {sorted(direct.passing - via.passing)}"
    assert via.passing - direct.passing <= ENFORCED_BY_GATEWAY, f"pass only through the gateway: {sorted(via.passing - direct.passing)}"
