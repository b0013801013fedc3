"""Helpers for the tests of gateway-service in standalone mode (management API + data plane on one
listener, adapters run as child processes): starting and stopping such a gateway, calling the REST
API, and finding the processes an adapter left behind.

The gateway runs in its secure default: with no `[auth]` keys configured it creates an admin API key
in its data directory (admin.key) on first start, and `Gateway` sends that key on every request.
"""
from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conftest import GATEWAY_BIN, Proc, bearer, free_port, http_get


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self):
        return json.loads(self.text)


def api(base: str, method: str, path: str, body=None, headers: dict[str, str] | None = None,
        timeout: float = 30.0) -> Response:
    """One management API request; never raises on an HTTP error status."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"content-type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode(errors="replace"))


ADMIN_KEY = "admin.key"
_OWN = object()  # Gateway.api's default token: the gateway's admin key


class Gateway:
    """gateway-service started standalone: `--listen`, `--admin-listen`, `--data-dir` (and `--config`
    when given). `token` is the admin's key: the one given (when the configuration has its own
    `[[auth.api_keys]]`, admin.key is not used), else the admin.key the gateway created or reuses."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str] | None = None, config: Path | None = None,
                 token: str | None = None):
        self.port, self.admin_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.data_dir = Path(data_dir)
        argv = [GATEWAY_BIN, "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
                "--data-dir", data_dir]
        if config is not None:
            argv += ["--config", config]
        self.proc = Proc(name, argv, env={"RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})})
        self.proc.wait_until(lambda: http_get(f"{self.admin}/readyz", 1)[0] == 200, f"200 from {self.admin}/readyz")
        if token is None:
            key_file = self.data_dir / ADMIN_KEY
            self.proc.wait_until(key_file.is_file, f"{key_file}")
            token = key_file.read_text().strip()
        self.token = token
        self.proc.wait_until(lambda: http_get(f"{self.url}/adapters", 1, self.headers)[0] == 200,
                             f"200 from {self.url}/adapters")

    @property
    def headers(self) -> dict[str, str]:
        """`Authorization: Bearer <admin key>`."""
        return bearer(self.token)

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def api(self, method: str, path: str, body=None, token=_OWN, headers: dict[str, str] | None = None,
            **kw) -> Response:
        """A request as the admin, or with `token` (None: no Authorization header)."""
        token = self.token if token is _OWN else token
        return api(self.url, method, path, body, headers={**(bearer(token) if token else {}), **(headers or {})}, **kw)

    def adapter_url(self, adapter: str, path: str = "mcp") -> str:
        return f"{self.url}/adapters/{adapter}/{path}"

    def wait_ready(self, adapter: str, replicas: int, timeout: float = 60.0) -> dict:
        """Waits until status shows `replicas` desired and ready (and no other replica); returns it."""
        deadline, status = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            r = self.api("GET", f"/adapters/{adapter}/status")
            if r.status == 200:
                status = r.json()
                states = [x["state"] for x in status["replicas"]]
                if (status["replicaCount"] == replicas and status["readyReplicas"] == replicas
                        and states == ["ready"] * replicas):
                    return status
            time.sleep(0.2)
        raise AssertionError(f"{adapter}: not {replicas} ready replicas within {timeout:.0f}s; last status {status}\n"
                             f"{self.proc.tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as a service manager would; returns the exit code (SIGKILL after `timeout`)."""
        if self.proc.alive():
            self.proc.popen.send_signal(signal.SIGTERM)
            try:
                self.proc.popen.wait(timeout)
            except Exception:  # noqa: BLE001 - a hang is reported by the caller through the exit code
                self.proc.kill()
        return self.proc.popen.returncode


# --- processes -----------------------------------------------------------------------------


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # gone, or not ours
        return b""


def cmdline(pid: int) -> str:
    return _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace").strip()


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: tells a process from a later one that got the same pid."""
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return stat.rsplit(")", 1)[-1].split()[19] if ")" in stat else ""


def is_zombie(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    return ")" in stat and stat.rsplit(")", 1)[-1].split()[0] == "Z"


def descendants(root: int) -> dict[int, tuple[str, str]]:
    """Every live descendant of `root`: pid -> (start time, command line)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
        if ")" in stat:
            children.setdefault(int(stat.rsplit(")", 1)[-1].split()[1]), []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = (start_time(pid), cmdline(pid))
        todo += children.get(pid, [])
    return found


def still_running(procs: dict[int, tuple[str, str]]) -> dict[int, str]:
    """Those of `procs` (from `descendants`) that still run (same pid and start time, not a zombie)."""
    return {pid: cmd for pid, (started, cmd) in procs.items()
            if start_time(pid) == started and not is_zombie(pid)}


def marked(marker: str, needle: str = "") -> dict[int, str]:
    """Live processes whose environment holds E2E_MARK=<marker> (and whose command line contains
    `needle`): the processes of adapters created by one test, whoever their parent is now."""
    want = f"E2E_MARK={marker}".encode()
    found = {}
    for pid in _pids():
        if pid == os.getpid() or is_zombie(pid):
            continue
        if want in _read(f"/proc/{pid}/environ").split(b"\0"):
            cmd = cmdline(pid)
            if needle in cmd:
                found[pid] = cmd
    return found


def wait_gone(find, timeout: float = 15.0) -> dict[int, str]:
    """Polls `find()` (-> {pid: cmd}) until it is empty or `timeout` passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
