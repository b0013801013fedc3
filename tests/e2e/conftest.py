"""Process management for the end-to-end tests: replicas, server-everything, the conformance fixture
and the gateways.

Everything listens on 127.0.0.1 on free ports; every process logs to target/e2e/logs/<name>.log,
and a failing test's report ends with the tails of those logs.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "target" / "e2e"
LOGS = E2E / "logs"
NODE22 = E2E / "bin" / "node22"
NODE_MODULES = E2E / "node" / "node_modules"
GATEWAY_BIN = Path(os.environ.get("GATEWAY_BIN", ROOT / "target" / "release" / "gateway-service"))
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose output goes to target/e2e/logs/<name>.log."""

    all: list[Proc] = []

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        self.name, self.log = name, LOGS / f"{name}.log"
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, start_new_session=True,
            )
        Proc.all.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        state = "running" if self.alive() else f"exited {self.popen.returncode}"
        return f"--- {self.log.relative_to(ROOT)} ({state}), last {len(text)} lines ---\n" + "\n".join(text)

    def wait_until(self, ready, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited before {what}\n{self.tail()}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f}s\n{self.tail()}")

    def wait_port(self, port: int, timeout: float = 30.0) -> None:
        def accepts() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        self.wait_until(accepts, f"listener on port {port}", timeout)


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


def api_key(subject: str, roles: list[str] | tuple[str, ...] = ()) -> tuple[str, str]:
    """A new API key for `subject` and the `[[auth.api_keys]]` entry that accepts it (the key's
    lowercase hex SHA-256, as `gateway-service api-key` prints it)."""
    key = "mcpgw_" + secrets.token_urlsafe(32)
    entry = "\n".join(["[[auth.api_keys]]", f'subject = "{subject}"',
                       "roles = [" + ", ".join(f'"{r}"' for r in roles) + "]",
                       f'sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"'])
    return key, entry


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Replica:
    name: str
    port: int
    proc: Proc


def start_replicas(names: list[str], transport: str) -> list[Replica]:
    replicas = []
    for name in names:
        port = free_port()
        argv = [sys.executable, HERE / "replica_server.py", "--port", port, "--transport", transport, "--replica", name]
        replicas.append(Replica(name, port, Proc(name, argv)))
    for r in replicas:
        r.proc.wait_port(r.port)
    return replicas


@dataclass
class Stack:
    """The running gateways and what they front.

    `gateway` requires authentication: it accepts one API key (subject e2e-client, no roles),
    which every client of the tests sends (`headers`). `open_gateway` runs with
    `insecure_no_auth = true` on loopback and fronts only what the official conformance suite
    tests (the conformance fixture and server-everything): its runner has no way to send an
    Authorization header, so the suite can only run against a gateway with auth off."""

    url: str  # data plane of the authenticating gateway, e.g. http://127.0.0.1:PORT
    admin: str  # its admin listener
    open_url: str  # data plane of the gateway without auth (conformance runs)
    replicas: dict[str, list[Replica]]  # adapter -> its replicas
    everything: str  # server-everything's own streamable HTTP URL
    fixture: str  # conformance_fixture.mjs's own streamable HTTP URL
    gateway: Proc
    open_gateway: Proc
    token: str  # the API key `gateway` accepts

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)

    def adapter_url(self, adapter: str, path: str = "mcp") -> str:
        return f"{self.url}/adapters/{adapter}/{path}"

    def open_adapter_url(self, adapter: str, path: str = "mcp") -> str:
        return f"{self.open_url}/adapters/{adapter}/{path}"


def adapter_tables(upstreams: dict[str, list[str]], sse_only: tuple[str, ...] = ()) -> list[str]:
    lines = []
    for name, urls in upstreams.items():
        lines += ["", "[[adapters]]", f'name = "{name}"', "upstreams = [" + ", ".join(f'"{u}"' for u in urls) + "]"]
        lines += ['sse_path = "/sse"'] if name in sse_only else ['mcp_path = "/mcp"']
    return lines


@pytest.fixture(scope="session")
def stack():
    if not GATEWAY_BIN.is_file():
        pytest.exit(f"gateway binary not found at {GATEWAY_BIN}: build it (cargo build --release -p gateway-service) "
                    "or set GATEWAY_BIN", returncode=2)
    if not NODE22.exists():
        pytest.exit("target/e2e is not set up: run tests/e2e/setup.sh", returncode=2)
    try:
        replicas = {
            "replicas": start_replicas(["http-a", "http-b"], "streamable-http"),
            "sse-replicas": start_replicas(["sse-a", "sse-b"], "sse"),
            "failover": start_replicas(["failover-a", "failover-b"], "streamable-http"),
        }
        ev_port = free_port()
        everything = Proc("server-everything", [
            NODE22, "--require", HERE / "loopback.cjs",
            NODE_MODULES / "@modelcontextprotocol/server-everything/dist/index.js", "streamableHttp",
        ], env={"PORT": str(ev_port)})
        everything.wait_port(ev_port)
        # Our conformance fixture runs beside target/e2e/node/node_modules so its imports resolve there.
        fixture_js = E2E / "node" / "conformance_fixture.mjs"
        shutil.copyfile(HERE / "conformance_fixture.mjs", fixture_js)
        fx_port = free_port()
        fixture = Proc("conformance-fixture", [NODE22, fixture_js], env={"PORT": str(fx_port)})
        fixture.wait_port(fx_port)

        upstreams = {name: [f"http://127.0.0.1:{r.port}" for r in rs] for name, rs in replicas.items()}
        conformance_upstreams = {"everything": [f"http://127.0.0.1:{ev_port}"],
                                 "conformance": [f"http://127.0.0.1:{fx_port}"]}
        # A client key without roles: the adapters of the configuration require none, so any
        # authenticated principal may use them.
        token, key_entry = api_key("e2e-client")
        gateways = []
        for name, adapters, settings, auth in [
            ("gateway", upstreams, [], ["", key_entry]),
            ("gateway-no-auth", conformance_upstreams, ["insecure_no_auth = true"], []),
        ]:
            port, admin_port = free_port(), free_port()
            config = [f'listen = "127.0.0.1:{port}"', f'admin_listen = "127.0.0.1:{admin_port}"', *settings]
            config += adapter_tables(adapters, sse_only=("sse-replicas",)) + auth
            config_file = E2E / f"{name}.toml"
            config_file.write_text("\n".join(config) + "\n")
            proc = Proc(name, [GATEWAY_BIN, "--config", config_file], env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
            gateways.append((proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"))
        for proc, _, admin in gateways:
            proc.wait_until(lambda admin=admin: http_get(f"{admin}/readyz", 1)[0] == 200, f"200 from {admin}/readyz")
        (gateway, url, admin), (open_gateway, open_url, _) = gateways
        yield Stack(url, admin, open_url, replicas, f"http://127.0.0.1:{ev_port}/mcp",
                    f"http://127.0.0.1:{fx_port}/mcp", gateway, open_gateway, token)
    finally:
        for p in reversed(Proc.all):
            p.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, append the tails of every process log to the test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and Proc.all:
        report.sections.append(("process logs", "\n\n".join(
            p.tail(60 if p.name.startswith("gateway") else 15) for p in Proc.all)))
