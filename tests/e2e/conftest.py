"""Process management for the end-to-end tests: replicas, server-everything, the conformance fixture
and the gateway.

Everything listens on 127.0.0.1 on free ports; every process logs to target/e2e/logs/<name>.log,
and a failing test's report ends with the tails of those logs.
"""
from __future__ import annotations

import os
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


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, str(e)


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
    """A running gateway and what it fronts."""

    url: str  # data plane, e.g. http://127.0.0.1:PORT
    admin: str  # admin listener
    replicas: dict[str, list[Replica]]  # adapter -> its replicas
    everything: str  # server-everything's own streamable HTTP URL
    fixture: str  # conformance_fixture.mjs's own streamable HTTP URL
    gateway: Proc

    def adapter_url(self, adapter: str, path: str = "mcp") -> str:
        return f"{self.url}/adapters/{adapter}/{path}"


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

        port, admin_port = free_port(), free_port()
        config = [f'listen = "127.0.0.1:{port}"', f'admin_listen = "127.0.0.1:{admin_port}"']
        upstreams = {name: [f"http://127.0.0.1:{r.port}" for r in rs] for name, rs in replicas.items()}
        upstreams["everything"] = [f"http://127.0.0.1:{ev_port}"]
        upstreams["conformance"] = [f"http://127.0.0.1:{fx_port}"]
        for name, urls in upstreams.items():
            config += ["", "[[adapters]]", f'name = "{name}"', "upstreams = [" + ", ".join(f'"{u}"' for u in urls) + "]"]
            config += ['sse_path = "/sse"'] if name == "sse-replicas" else ['mcp_path = "/mcp"']
        config_file = E2E / "gateway.toml"
        config_file.write_text("\n".join(config) + "\n")
        gateway = Proc("gateway", [GATEWAY_BIN, "--config", config_file],
                       env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
        admin = f"http://127.0.0.1:{admin_port}"
        gateway.wait_until(lambda: http_get(f"{admin}/readyz", 1)[0] == 200, f"200 from {admin}/readyz")
        yield Stack(f"http://127.0.0.1:{port}", admin, replicas, f"http://127.0.0.1:{ev_port}/mcp",
                    f"http://127.0.0.1:{fx_port}/mcp", gateway)
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
            p.tail(60 if p.name == "gateway" else 15) for p in Proc.all)))
