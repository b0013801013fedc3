"""Issue 6 as a user sees it: a gateway that authenticates every caller and lets each use only
the adapters it may, with the official MCP Python SDK client.

First the secure default alone: a standalone gateway-service with no `[auth]` section creates an
admin API key in its data directory (admin.key, mode 0600), prints it once, and refuses requests
without it (401 with `WWW-Authenticate: Bearer resource_metadata=...`).

Then a team: keys made with `gateway-service api-key` for `admin` (role mcp.admin), `alice` (no
role), `bob` (role team-a) and `carol` (role team-b), in the gateway's configuration file. (With
keys configured, the gateway does not create admin.key: the operator's admin key is one of them.)
The admin creates, through the management API, the example server (`mcp-example-server`) and
replica_server.py (its `caller` tool shows the identity headers a replica receives), both with
`requiredRoles: ["team-a"]`. Then:
  * without a token, the SDK client is refused (401);
  * bob lists tools and calls `whoami`; the replica is told `X-Mcp-UserId: bob`,
    `X-Mcp-Roles: team-a`, never bob's token, and not what bob claims in those headers himself;
  * carol (another team) and alice (no role, not the creator) get 403;
  * a session is its opener's: bob's session id presented by the admin gets 404, by carol 403,
    and bob carries on;
  * the management list shows each caller only the adapters it may read.

Every process an adapter of this test starts carries E2E_MARK=<marker> in its environment, so the
end of the module checks that none is left.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from conftest import GATEWAY_BIN, HERE, ROOT, bearer, http_get
from sessions import describe
from standalone import ADMIN_KEY, Gateway, api, marked, wait_gone

EXAMPLE_BIN = ROOT / "target" / "release" / "mcp-example-server"
TIMEOUT = 30.0
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "e2e-test-auth", "version": "0"}}}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-11-25"}


def text_of(result) -> str:
    assert not getattr(result, "is_error", False), f"tool error: {result.content}"
    return "".join(getattr(c, "text", "") for c in result.content)


def new_key(subject: str, roles: list[str]) -> tuple[str, str]:
    """`gateway-service api-key`, as an operator runs it: the key and the configuration entry."""
    argv = [str(GATEWAY_BIN), "api-key", "--subject", subject] + (["--roles", ",".join(roles)] if roles else [])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    key = re.search(r"^ {4}(\S+)$", out, re.M)
    assert key and "[[auth.api_keys]]" in out, f"gateway-service api-key printed:\n{out}"
    entry = out[out.index("[[auth.api_keys]]"):]
    assert f'subject = "{subject}"' in entry and re.search(r'sha256 = "[0-9a-f]{64}"', entry), entry
    return key[1], entry


@dataclass
class SdkOutcome:
    tools: set[str] | None  # None: the client failed
    whoami: str | None
    error: str | None
    statuses: list[int]  # every HTTP status the client received


def sdk_session(url: str, headers: dict[str, str] | None, tool: str = "whoami",
                arguments: dict | None = None) -> SdkOutcome:
    """The official SDK client with `headers` on every request: list tools, call `tool`."""
    statuses: list[int] = []

    async def count(response: httpx2.Response) -> None:
        statuses.append(response.status_code)

    async def run() -> SdkOutcome:
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT),
                                      event_hooks={"response": [count]}) as http:
            async with Client(streamable_http_client(url, http_client=http), mode="legacy",
                              read_timeout_seconds=TIMEOUT) as c:
                tools = {t.name for t in (await c.list_tools()).tools}
                return SdkOutcome(tools, text_of(await c.call_tool(tool, arguments or {})), None, statuses)

    try:
        return asyncio.run(asyncio.wait_for(run(), TIMEOUT * 2))
    except Exception as e:  # noqa: BLE001 - the refusal is what some tests expect
        return SdkOutcome(None, None, describe(e), statuses)


# --- the secure default ------------------------------------------------------------------------


def test_secure_default_creates_an_admin_key_and_refuses_requests_without_it(tmp_path):
    data_dir = tmp_path / "data"
    gw = Gateway("gateway-auth-default", data_dir)
    try:
        key_file = data_dir / ADMIN_KEY
        mode = stat.S_IMODE(key_file.stat().st_mode)
        lines = key_file.read_text().splitlines()
        assert mode == 0o600, f"{key_file} has mode {oct(mode)}"
        assert len(lines) == 1 and lines[0] == gw.token and gw.token.startswith("mcpgw_"), lines
        assert gw.proc.log.read_text(errors="replace").count(gw.token) == 1, "the admin key was not printed once"

        r = gw.api("GET", "/adapters", token=None)
        challenge = r.headers.get("www-authenticate", "")
        print(f"\n  no token: {r.status}, WWW-Authenticate: {challenge}")
        assert r.status == 401 and r.headers["content-type"].startswith("application/problem+json"), (r.status, r.text)
        assert challenge.startswith("Bearer ") and \
            f'resource_metadata="{gw.url}/.well-known/oauth-protected-resource"' in challenge, challenge
        r = gw.api("GET", "/adapters", token="mcpgw_not-a-key-of-this-gateway")
        assert r.status == 401 and 'error="invalid_token"' in r.headers.get("www-authenticate", ""), (r.status, r.headers)
        assert gw.api("GET", "/adapters").status == 200

        # What a client needs before it has a token is public.
        status, body = http_get(f"{gw.url}/openapi.json")
        assert status == 200 and json.loads(body)["openapi"], status
        status, body = http_get(f"{gw.url}/.well-known/oauth-protected-resource")
        assert status == 200 and json.loads(body)["resource"] == gw.url, body
    finally:
        assert gw.stop() == 0


# --- a team ----------------------------------------------------------------------------------------


@dataclass
class Team:
    gw: Gateway
    keys: dict[str, str]  # subject -> API key
    marker: str
    example_replicas: set[str]  # what whoami answers on each replica of the example server

    def headers(self, who: str) -> dict[str, str]:
        return bearer(self.keys[who])


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auth")
    roles = {"admin": ["mcp.admin"], "alice": [], "bob": ["team-a"], "carol": ["team-b"]}
    keys, entries = {}, []
    for subject, rs in roles.items():
        keys[subject], entry = new_key(subject, rs)
        entries.append(entry)
    config = tmp / "gateway.toml"
    config.write_text("\n".join(entries))
    marker = f"auth-{os.getpid()}-{time.monotonic_ns()}"
    env = {"E2E_MARK": marker}
    gw = Gateway("gateway-auth", tmp / "data", config=config, token=keys["admin"])
    try:
        assert not (tmp / "data" / ADMIN_KEY).exists(), "keys are configured, yet the gateway made admin.key"
        specs = [
            {"name": "example", "command": str(EXAMPLE_BIN), "args": ["--port", "{port}"], "replicaCount": 2,
             "requiredRoles": ["team-a"], "environmentVariables": env},
            {"name": "identity", "command": sys.executable, "args": [str(HERE / "replica_server.py"), "--port", "{port}"],
             "requiredRoles": ["team-a"], "environmentVariables": env},
        ]
        for spec in specs:
            r = gw.api("POST", "/adapters", spec)
            assert r.status == 201, f"POST {spec['name']}: {r.status} {r.text}"
            assert r.json()["createdBy"] == "admin" and r.json()["requiredRoles"] == ["team-a"], r.text
        status = gw.wait_ready("example", 2)
        gw.wait_ready("identity", 1)
        replicas = {"p" + r["url"].rsplit(":", 1)[1] for r in status["replicas"]}
        yield Team(gw, keys, marker, replicas)
    finally:
        code = gw.stop()
        left = wait_gone(lambda: marked(marker), timeout=10)
        assert code == 0, f"gateway exit code {code} on SIGTERM"
        assert not left, f"processes of the test's adapters still running after the gateway stopped: {left}"


def test_without_a_token_the_sdk_client_is_refused(team):
    url = team.gw.adapter_url("example")
    r = api(team.gw.url, "POST", "/adapters/example/mcp", INIT, headers=MCP_HEADERS)
    challenge = r.headers.get("www-authenticate", "")
    print(f"\n  POST initialize without a token: {r.status}, WWW-Authenticate: {challenge}")
    assert r.status == 401, (r.status, r.text)
    metadata = f"{team.gw.url}/.well-known/oauth-protected-resource/adapters/example/mcp"
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata}"' in challenge, challenge
    assert json.loads(r.text)["error"]["message"], r.text  # a JSON-RPC error, as MCP clients expect
    status, body = http_get(metadata)
    assert status == 200 and json.loads(body)["resource"] == url, (status, body)

    outcome = sdk_session(url, None)
    print(f"  SDK client without a token: statuses {outcome.statuses}, error {outcome.error}")
    assert outcome.tools is None and outcome.statuses and set(outcome.statuses) == {401}, outcome


def test_a_holder_of_the_role_uses_the_adapter(team):
    outcome = sdk_session(team.gw.adapter_url("example"), team.headers("bob"))
    print(f"\n  bob: tools {sorted(outcome.tools or [])}, whoami {outcome.whoami}, error {outcome.error}")
    assert outcome.error is None, outcome
    assert {"whoami", "counter_increment", "echo"} <= outcome.tools, outcome.tools
    assert outcome.whoami in team.example_replicas, (outcome.whoami, team.example_replicas)


def test_the_replica_learns_who_calls_and_never_sees_the_token(team):
    # bob claims to be someone else in the identity headers: the gateway drops those.
    spoof = {**team.headers("bob"), "X-Mcp-UserId": "admin", "X-Mcp-Roles": "mcp.admin"}
    outcome = sdk_session(team.gw.adapter_url("identity"), spoof, tool="caller")
    print(f"\n  the replica was told: {outcome.whoami} (error {outcome.error})")
    assert outcome.error is None, outcome
    assert json.loads(outcome.whoami) == {"x-mcp-userid": "bob", "x-mcp-roles": "team-a", "authorization": None}


@pytest.mark.parametrize("who", ["carol", "alice"])
def test_others_are_forbidden(team, who):
    """carol holds another team's role; alice holds none and did not create the adapter."""
    outcome = sdk_session(team.gw.adapter_url("example"), team.headers(who))
    print(f"\n  {who}: statuses {outcome.statuses}, error {outcome.error}")
    assert outcome.tools is None and outcome.statuses and set(outcome.statuses) == {403}, outcome
    r = api(team.gw.url, "POST", "/adapters/example/mcp", INIT, headers={**MCP_HEADERS, **team.headers(who)})
    assert r.status == 403 and "www-authenticate" not in r.headers, (r.status, r.headers, r.text)


def test_a_session_is_its_openers(team):
    path = "/adapters/example/mcp"
    bob = {**MCP_HEADERS, **team.headers("bob")}
    r = api(team.gw.url, "POST", path, INIT, headers=bob)
    session = r.headers.get("mcp-session-id")
    assert r.status == 200 and session, (r.status, r.headers, r.text)
    bob["mcp-session-id"] = session
    r = api(team.gw.url, "POST", path, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=bob)
    assert r.status == 202, (r.status, r.text)

    def call(headers: dict[str, str], n: int) -> tuple[int, str]:
        body = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "counter_increment", "arguments": {}}}
        r = api(team.gw.url, "POST", path, body, headers=headers)
        return r.status, r.text

    assert call(bob, 2)[0] == 200
    admin = {**MCP_HEADERS, **team.headers("admin"), "mcp-session-id": session}
    carol = {**MCP_HEADERS, **team.headers("carol"), "mcp-session-id": session}
    (admin_status, admin_text), (carol_status, carol_text) = call(admin, 3), call(carol, 4)
    bob_status, bob_text = call(bob, 5)
    print(f"\n  bob's session {session[:8]}...: admin {admin_status}, carol {carol_status}, bob again {bob_status}")
    assert admin_status == 404, f"the admin used bob's session: {admin_status} {admin_text}"
    assert carol_status == 403, f"carol used bob's session: {carol_status} {carol_text}"
    assert bob_status == 200 and re.search(r'p\d+:2\b', bob_text), f"bob's session broke: {bob_status} {bob_text}"
    r = api(team.gw.url, "DELETE", path, headers=carol)
    assert r.status == 403, (r.status, r.text)
    assert api(team.gw.url, "DELETE", path, headers=bob).status in (200, 202, 204)


def test_the_management_api_shows_each_caller_what_it_may_read(team):
    gw = team.gw
    listed = {who: gw.api("GET", "/adapters", token=key) for who, key in team.keys.items()}
    names = {who: sorted(a["name"] for a in r.json()) for who, r in listed.items() if r.status == 200}
    print(f"\n  GET /adapters per caller: {names}")
    assert all(r.status == 200 for r in listed.values()), {w: (r.status, r.text) for w, r in listed.items()}
    assert names == {"admin": ["example", "identity"], "bob": ["example", "identity"], "alice": [], "carol": []}

    assert gw.api("GET", "/adapters/example", token=team.keys["bob"]).status == 200
    assert gw.api("GET", "/adapters/example/status", token=team.keys["bob"]).status == 200
    for who in ("carol", "alice"):
        r = gw.api("GET", "/adapters/example", token=team.keys[who])
        assert r.status == 403 and r.headers["content-type"].startswith("application/problem+json"), (who, r.status, r.text)
    # Reading is not changing: bob is not the creator, so no update, delete or logs.
    assert gw.api("GET", "/adapters/example/logs?tail=1", token=team.keys["bob"]).status == 403
    r = gw.api("DELETE", "/adapters/example", token=team.keys["bob"])
    assert r.status == 403, (r.status, r.text)
    # A non-admin may not make the gateway run a program.
    r = gw.api("POST", "/adapters", {"name": "alices", "command": str(EXAMPLE_BIN), "args": ["--port", "{port}"]},
               token=team.keys["alice"])
    assert r.status == 403 and "command" in r.json()["detail"], (r.status, r.text)
    assert gw.api("GET", "/adapters/alices").status == 404
    # No token at all: 401 on the API too.
    assert gw.api("GET", "/adapters", token=None).status == 401
