"""Two gateways sharing sessions through one Redis, behind nginx as a round-robin HTTP balancer.

    client (official Python SDK) -> nginx (round robin, keepalive) -> gateway 1 | gateway 2 -> replicas
                                                                          \\ redis-server /

The module fixture starts redis-server, two streamable-HTTP replicas and two HTTP+SSE replicas
(replica_server.py), two gateway processes with the same adapters and `session_store` on that
Redis, and nginx (non-daemon, its own prefix under target/e2e/nginx). Every request a client sends
may reach either gateway, so each request of a session is routed from a record the other gateway
may have written. nginx logs, per request, the session id and the gateway (upstream) that served
it, so the tests see requests of one session alternate between the gateways.

Both gateways accept the same API key (an `[[auth.api_keys]]` entry made by the fixture) and every
client sends it; nginx passes `Authorization` through as it does any request header.

The last test stops gateway 1 (SIGTERM) mid-run; it runs last because it leaves one gateway.
Needs `redis-server` and `nginx` (Debian: apt-get install -y redis-server nginx).
"""
from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import sessions
from conftest import E2E, GATEWAY_BIN, Proc, api_key, bearer, free_port, http_get, start_replicas
from test_gateway import assert_all_passed

SBIN = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])  # nginx lives here, often off a user's PATH


def need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path=SBIN)
    if not path:
        pytest.fail(f"{tool} not found on PATH: install it (Debian: apt-get install -y {tool}); "
                    f".ci/run installs it when missing", pytrace=False)
    return path


@dataclass
class Gateway:
    name: str
    url: str
    admin: str
    proc: Proc

    def requests_total(self) -> float:
        """Sum of mcp_gateway_requests_total over every label set."""
        status, body = http_get(f"{self.admin}/metrics")
        assert status == 200, f"{self.name} /metrics answered {status}"
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith("mcp_gateway_requests_total"))


@dataclass
class Balanced:
    url: str  # nginx
    gateways: list[Gateway]
    access_log: Path
    token: str  # the API key both gateways accept

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def adapter_url(self, adapter: str, path: str = "mcp") -> str:
        return f"{self.url}/adapters/{adapter}/{path}"

    def log_offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def upstreams_by_session(self, since: int) -> dict[str, set[str]]:
        """Session id -> the gateways (upstream addresses) that served its requests, from nginx's log."""
        with open(self.access_log, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        by_session: dict[str, set[str]] = collections.defaultdict(set)
        for line in lines:  # method uri status upstream_addr(s) mcp-session-id query
            m = re.fullmatch(r"(\S+) (\S+) (\d+) (.+?) (\S+) (\S*)", line)
            if not m:
                continue
            query = re.search(r"(?:^|&)(?:sessionId|session_id)=([^&]+)", m[6])  # legacy HTTP+SSE
            session = m[5] if m[5] != "-" else query[1] if query else None
            if session:
                # "a, b" when nginx retried on the next gateway: the last one served the request.
                by_session[session].add(m[4].split(",")[-1].strip())
        return by_session

    def statuses(self, since: int) -> tuple[collections.Counter, int]:
        """HTTP statuses nginx answered since the offset, and how many requests it retried on the other gateway."""
        with open(self.access_log, "rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        return collections.Counter(line.split(" ")[2] for line in lines), sum("," in line.split(" ", 3)[3] for line in lines)


def gateway_config(listen: int, admin: int, redis_url: str, upstreams: dict[str, list[str]], key_entry: str) -> str:
    lines = [f'listen = "127.0.0.1:{listen}"', f'admin_listen = "127.0.0.1:{admin}"',
             f'session_store = "{redis_url}"', 'management = false', 'shutdown_grace = "2s"']
    for name, urls in upstreams.items():
        lines += ["", "[[adapters]]", f'name = "{name}"', "upstreams = [" + ", ".join(f'"{u}"' for u in urls) + "]"]
    lines += ["", key_entry]
    return "\n".join(lines) + "\n"


def nginx_config(prefix: Path, listen: int, gateways: list[int]) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""  # as root, workers would drop to nobody
    servers = "".join(f"    server 127.0.0.1:{p};\n" for p in gateways)
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  log_format mcp '$request_method $uri $status $upstream_addr $http_mcp_session_id $args';
  access_log {prefix}/access.log mcp;
  upstream gateways {{
{servers}    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{listen};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";         # keep upstream connections alive
      proxy_set_header Host $http_host;       # the gateway checks Host (DNS-rebinding protection)
      proxy_buffering off;                    # stream responses (SSE) as they come
      proxy_request_buffering off;            # and request bodies
      proxy_next_upstream error timeout;      # a stopped gateway's requests go to the other
      proxy_connect_timeout 2s;
      proxy_read_timeout 300s;
      proxy_send_timeout 300s;
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def balanced():
    if not GATEWAY_BIN.is_file():
        pytest.exit(f"gateway binary not found at {GATEWAY_BIN}: run cargo xtask e2e", returncode=2)
    redis_server, nginx = need("redis-server"), need("nginx")
    procs: list[Proc] = []
    try:
        redis_port = free_port()
        redis = Proc("ha-redis", [redis_server, "--port", redis_port, "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"])
        procs.append(redis)
        redis.wait_port(redis_port)

        replicas = {"replicas": start_replicas(["ha-http-a", "ha-http-b"], "streamable-http"),
                    "sse-replicas": start_replicas(["ha-sse-a", "ha-sse-b"], "sse")}
        procs += [r.proc for rs in replicas.values() for r in rs]
        upstreams = {name: [f"http://127.0.0.1:{r.port}" for r in rs] for name, rs in replicas.items()}

        token, key_entry = api_key("e2e-ha-client")
        gateways = []
        for name in ["ha-gateway-1", "ha-gateway-2"]:
            port, admin = free_port(), free_port()
            config = E2E / f"{name}.toml"
            config.write_text(gateway_config(port, admin, f"redis://127.0.0.1:{redis_port}/0", upstreams, key_entry))
            proc = Proc(name, [GATEWAY_BIN, "--config", config], env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
            procs.append(proc)
            gateways.append(Gateway(name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}", proc))
        for g in gateways:
            g.proc.wait_until(lambda g=g: http_get(f"{g.admin}/readyz", 1)[0] == 200, f"200 from {g.admin}/readyz")
            status, body = http_get(f"{g.admin}/readyz")
            assert "degraded" not in body, f"{g.name} reports its session store degraded: {body}"

        prefix = E2E / "nginx"
        shutil.rmtree(prefix, ignore_errors=True)
        (prefix / "tmp").mkdir(parents=True)
        nginx_port = free_port()
        (prefix / "nginx.conf").write_text(nginx_config(prefix, nginx_port, [int(g.url.rsplit(":", 1)[1]) for g in gateways]))
        proxy = Proc("ha-nginx", [nginx, "-p", prefix, "-c", prefix / "nginx.conf", "-e", "stderr"])
        procs.append(proxy)
        proxy.wait_port(nginx_port)
        yield Balanced(f"http://127.0.0.1:{nginx_port}", gateways, prefix / "access.log", token)
    finally:
        for p in reversed(procs):
            p.stop()


def run_through(balanced: Balanced, **kw) -> tuple[sessions.Report, list[float], dict[str, set[str]]]:
    """Run sessions through nginx; return the report, each gateway's requests_total growth, and the
    gateways each session's requests reached (nginx's log)."""
    before, offset = [g.requests_total() for g in balanced.gateways], balanced.log_offset()
    report = asyncio.run(sessions.run(sessions.Options(headers=balanced.headers, **kw)))
    print(f"\n  {report.summary()}")
    for line in report.failures[:10] + report.timeouts[:10]:
        print(f"  FAIL {line}")
    grown = [g.requests_total() - b for g, b in zip(balanced.gateways, before)]
    return report, grown, balanced.upstreams_by_session(offset)


def assert_both_gateways_served(grown: list[float], by_session: dict[str, set[str]], sessions_run: int) -> None:
    total = sum(grown)
    both = sum(1 for ups in by_session.values() if len(ups) == 2)
    print(f"  mcp_gateway_requests_total grew by {[int(g) for g in grown]} (gateway 1, 2); "
          f"{both}/{len(by_session)} sessions had requests on both gateways")
    assert total > 0, "no request counted by either gateway"
    assert min(grown) >= 0.3 * total, f"round robin not spread over the gateways: {grown}"
    assert len(by_session) >= sessions_run, f"nginx logged {len(by_session)} sessions, expected {sessions_run}"
    assert both >= 0.8 * len(by_session), \
        f"only {both}/{len(by_session)} sessions had requests on both gateways: requests do not alternate"


def test_streamable_http_sessions_alternate_between_gateways(balanced):
    report, grown, by_session = run_through(balanced, url=balanced.adapter_url("replicas"), mode="legacy",
                                            sessions=40, calls=6)
    assert_all_passed(report)
    assert all(v < "2026" for v in report.versions), report.versions
    assert set(report.final) == {"ha-http-a", "ha-http-b"}, f"sessions per replica: {dict(report.final)}"
    assert min(report.final.values()) >= 10, f"placement uneven across gateways: {dict(report.final)}"
    assert_both_gateways_served(grown, by_session, 40)


def test_http_sse_posts_alternate_between_gateways_while_stream_stays(balanced):
    """The GET /sse stream is one long response on one gateway; its POSTs to /messages go round robin."""
    report, grown, by_session = run_through(balanced, url=balanced.adapter_url("sse-replicas", "sse"),
                                            transport="sse", sessions=30, calls=6)
    assert_all_passed(report)
    assert set(report.final) == {"ha-sse-a", "ha-sse-b"}, f"sessions per replica: {dict(report.final)}"
    assert_both_gateways_served(grown, by_session, 30)


def test_sigterm_one_gateway_mid_run_loses_no_session(balanced):
    """Gateway 1 gets SIGTERM while 40 sessions run: nginx sends new requests to gateway 2, which
    routes them from the Redis records; no session is re-initialized, loses state or times out."""
    victim, survivor = balanced.gateways
    before, offset = [g.requests_total() for g in balanced.gateways], balanced.log_offset()

    async def scenario() -> tuple[sessions.Report, float, float]:
        opts = sessions.Options(url=balanced.adapter_url("replicas"), mode="legacy", sessions=40, calls=40,
                                pause=0.1, timeout=10, headers=balanced.headers)
        report = sessions.Report()
        start = time.monotonic()
        run = asyncio.create_task(sessions.run(opts, report))
        # Stop once the sessions are under way on both replicas (40 calls at 0.1 s: about 4 s each).
        while min(report.calls["ha-http-a"], report.calls["ha-http-b"]) < 100 and not run.done():
            await asyncio.sleep(0.05)
        assert not run.done(), "the sessions finished before the gateway could be stopped"
        victim.proc.popen.terminate()
        stopped_at = time.monotonic() - start
        print(f"\n  SIGTERM to {victim.name} after {stopped_at:.1f} s, calls so far {dict(report.calls)}")
        await run
        return report, stopped_at, time.monotonic() - start

    report, stopped_at, total = asyncio.run(scenario())
    print(f"  {report.summary()}")
    victim.proc.popen.wait(15)
    grown = [g.requests_total() - b for g, b in zip([survivor], before[1:])]
    print(f"  {victim.name} exited {victim.proc.popen.returncode}; {survivor.name} served {int(grown[0])} requests "
          f"during the run; sessions ran {total - stopped_at:.1f} s after the SIGTERM")
    statuses, retried = balanced.statuses(offset)
    print(f"  nginx answered {dict(statuses)}; {retried} requests retried on the other gateway")
    assert_all_passed(report)
    assert not [s for s in statuses if s >= "500"], f"nginx answered errors: {dict(statuses)}"
    assert report.reconnects == 0, f"sessions re-initialized: {dict(report.reasons)}"
    assert set(report.final) == {"ha-http-a", "ha-http-b"}, f"sessions per replica: {dict(report.final)}"
    assert total - stopped_at > 1.0, "the sessions hardly ran after the SIGTERM: the test proves nothing"
    assert victim.proc.popen.returncode == 0, f"{victim.name} exited {victim.proc.popen.returncode} on SIGTERM"
