"""Schemathesis hooks for test_api_schema.py, loaded by the schemathesis CLI through
SCHEMATHESIS_HOOKS=api_schema_hooks (with tests/e2e on PYTHONPATH). Configured by the environment:

  E2E_ST_BASE         the gateway's base URL
  E2E_ST_TOKEN        the admin's API key, sent when a fixture is created again
  E2E_ST_FIXTURES     JSON {name: spec}: adapters the test created before the run; one the run
                      deletes is created again, so later requests still find adapters to act on
  E2E_ST_REQUEST_LOG  a file that gets one JSON line per request: method, path template, status
                      and the problem's `detail`

Generated adapter specs practically never pass the server's own checks (a spec needs `command`
or `upstreams`; `command` must exist), so explicit examples add successful writes: POST of an
`upstreams` adapter and of one running a fixture's command, PUTs that change fixtures (a new
upstream, scaling the example server down; a DELETE brings the fixture back as it was), and a
logs request asking for NDJSON.

Generated requests must neither make the gateway run anything nor hang the run:
  * `follow=true` on the logs endpoint streams until the client goes away, so a generated
    `follow` that means true (`true`, `1`) is sent as `false`; other values, valid or not, go
    as generated (the CLI's --request-timeout is a backstop);
  * the gateway runs with PATH set to an empty directory, so a generated `command` is refused as
    "not found on the gateway's PATH"; a request could still bring its own PATH in
    `environmentVariables` (that key is dropped) or name a program by path (a command containing
    '/' is replaced by a path that does not exist, unless it is a fixture's command: the example
    server).
"""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import schemathesis

MISSING = "/nonexistent/mcp-gateway-e2e/no-such-program"
BASE = os.environ.get("E2E_ST_BASE", "")
TOKEN = os.environ.get("E2E_ST_TOKEN", "")
FIXTURES: dict = json.loads(os.environ.get("E2E_ST_FIXTURES", "{}"))
REQUEST_LOG = os.environ.get("E2E_ST_REQUEST_LOG")
KNOWN_COMMANDS = {spec["command"] for spec in FIXTURES.values() if spec.get("command")}  # the fixtures' own
_lock = threading.Lock()

_spec = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "mcp-gateway.openapi.json").read_text())
LOG_LINE = jsonschema.Draft202012Validator({**_spec["components"]["schemas"]["LogLine"]})


def _fixture(kind: str) -> dict:
    return next(spec for spec in FIXTURES.values() if spec["name"].endswith(kind))


@schemathesis.hook
def before_add_examples(context, examples):
    op = context.operation
    label = f"{op.method.upper()} {op.path}"
    if label == "POST /adapters":
        run = {**_fixture("example"), "name": "st-created-run", "replicaCount": 1}
        examples.append(op.Case(body={"name": "st-created", "upstreams": ["http://127.0.0.1:11"],
                                      "description": "created by schemathesis"}, media_type="application/json"))
        examples.append(op.Case(body=run, media_type="application/json"))
    elif label == "PUT /adapters/{name}":
        upstream = {**_fixture("upstream"), "upstreams": ["http://127.0.0.1:12"]}
        example = {**_fixture("example"), "replicaCount": 1}
        for spec in (upstream, example):
            examples.append(op.Case(path_parameters={"name": spec["name"]}, body=spec, media_type="application/json"))
    elif label == "GET /adapters/{name}/logs":
        name = _fixture("example")["name"]
        examples.append(op.Case(path_parameters={"name": name}, query={"tail": 5},
                                headers={"accept": "application/x-ndjson"}))
        examples.append(op.Case(path_parameters={"name": name}, query={"since": "10m"}))


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if isinstance(query, dict) and "follow" in query and str(query["follow"]).lower() in ("true", "1"):
        query["follow"] = "false"
    body = case.body
    if isinstance(body, dict):
        env = body.get("environmentVariables")
        if isinstance(env, dict):
            for key in [k for k in env if isinstance(k, str) and k.upper() == "PATH"]:
                del env[key]
        command = body.get("command")
        if isinstance(command, str) and "/" in command and command not in KNOWN_COMMANDS:
            body["command"] = MISSING


@schemathesis.hook
def after_call(context, case, response):
    name = (case.path_parameters or {}).get("name")
    if REQUEST_LOG:
        detail = ""
        if response.status_code >= 400 and "problem" in response.headers.get("content-type", [""])[0]:
            try:
                detail = json.loads(response.content).get("detail", "")
            except ValueError:
                detail = response.content[:200].decode(errors="replace")
        line = json.dumps({"method": case.method.upper(), "path": case.path, "status": response.status_code,
                           "fixture": name in FIXTURES, "detail": detail})
        with _lock, open(REQUEST_LOG, "a") as f:
            f.write(line + "\n")
    if case.method.upper() == "DELETE" and response.status_code == 204 and name in FIXTURES:
        req = urllib.request.Request(f"{BASE}/adapters", data=json.dumps(FIXTURES[name]).encode(), method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
        try:
            urllib.request.urlopen(req, timeout=30).close()
        except urllib.error.HTTPError as e:  # 409: a concurrent worker created it first
            if e.code != 409:
                raise


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    """Every line must be a LogLine; the first is handed to schemathesis' own check. An empty body
    has nothing to validate."""
    lines = [line for line in response.content.decode().split("\n") if line]
    if not lines:
        raise NotImplementedError("empty NDJSON body")
    values = []
    for n, line in enumerate(lines, 1):
        value = json.loads(line)
        errors = [e.message for e in LOG_LINE.iter_errors(value)]
        if errors:
            raise ValueError(f"NDJSON line {n} is not a LogLine: {errors}: {line[:200]}")
        values.append(value)
    return values[0]
