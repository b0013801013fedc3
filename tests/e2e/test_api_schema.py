"""Schema-driven test of the management API: schemathesis generates requests for every operation of
the checked-in OpenAPI document (openapi/mcp-gateway.openapi.json) and sends them to a standalone
gateway-service with a temporary data directory. No response may be a 5xx, and every response must
conform to the document: a documented status code, a documented content type, a body that matches
the schema (checks not_a_server_error, status_code_conformance, content_type_conformance,
response_schema_conformance).

Checks left out: response_headers_conformance (the only documented header, POST's Location, is
checked by test_management.py), and the checks about the API's own validation
(negative_data_rejection, positive_data_acceptance): the document says less than the server
checks (a spec needs `command` or `upstreams`; `command` must exist on the gateway's PATH), so
schema-valid requests are refused by design and those checks would fail on the design, not a bug.

Auth: the gateway runs in its secure default (an admin key created in its data directory) and
schemathesis sends that key on every request (`--header`), so it explores the API as an admin.
When the document declares its bearer security scheme, the `ignored_auth` check runs too (requests
without a valid token must be refused). object_level_authorization is left out: it needs a second
principal's token per operation; test_auth.py checks who may see what.

Safety: the gateway runs with PATH set to an empty directory, so a generated `command` cannot run
anything; api_schema_hooks.py drops a generated PATH, replaces commands given by path, and turns
`follow=true` (a log stream that never ends) into `follow=false`. Three adapters exist before the
run (the example server by its full path, an `upstreams` adapter, a stdio one), so the operations on
`/adapters/{name}` reach real adapters and not only 404s. At the end the gateway is stopped and no
process it started may remain.

Knobs: E2E_ST_MAX_EXAMPLES (default 200 per operation and phase: about a minute), E2E_ST_SEED.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import time

from conftest import E2E, HERE, LOGS, ROOT
from standalone import Gateway, descendants, marked, still_running, wait_gone

VENV_BIN = E2E / "venv" / "bin"
SPEC = ROOT / "openapi" / "mcp-gateway.openapi.json"
EXAMPLE_BIN = ROOT / "target" / "release" / "mcp-example-server"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def declares_bearer_auth(spec: dict) -> bool:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    return any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values())


def test_management_api_conforms_to_its_openapi_document(tmp_path):
    marker = f"api-schema-{os.getpid()}-{time.monotonic_ns()}"
    empty_path = tmp_path / "empty-path"
    empty_path.mkdir()
    env = {"E2E_MARK": marker}
    fixtures = {
        "st-example": {"name": "st-example", "command": str(EXAMPLE_BIN), "args": ["--port", "{port}"],
                       "replicaCount": 2, "environmentVariables": env},
        "st-upstream": {"name": "st-upstream", "upstreams": ["http://127.0.0.1:9", "http://127.0.0.1:10"]},
        "st-stdio": {"name": "st-stdio", "transport": "stdio", "command": str(EXAMPLE_BIN),
                     "args": ["--transport", "stdio"], "environmentVariables": env},
    }
    gw = Gateway("gateway-api-schema", tmp_path / "data", env={"PATH": str(empty_path)})
    try:
        for spec in fixtures.values():
            r = gw.api("POST", "/adapters", spec)
            assert r.status == 201, f"creating {spec['name']}: {r.status} {r.text}"
        gw.wait_ready("st-example", 2)

        request_log = tmp_path / "requests.ndjson"
        report_dir = tmp_path / "report"
        checks = CHECKS + (",ignored_auth" if declares_bearer_auth(json.loads(SPEC.read_text())) else "")
        argv = [
            VENV_BIN / "schemathesis", "run", SPEC, "--url", gw.url,
            "--header", f"Authorization: Bearer {gw.token}",
            "--checks", checks,
            "--max-examples", os.environ.get("E2E_ST_MAX_EXAMPLES", "200"),
            "--request-timeout", "10",
        # One worker: with several, hypothesis parses lambdas with `ast` in parallel threads, which
            # Python 3.11.7 breaks on (SystemError: AST constructor recursion depth mismatch, gh-106905).
            "--workers", "1",
            "--generation-database", "none",
            "--report", "junit,ndjson", "--report-dir", report_dir,
            "--no-color",
        ]
        if seed := os.environ.get("E2E_ST_SEED"):
            argv += ["--seed", seed]
        st_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "SCHEMATHESIS_HOOKS": "api_schema_hooks",
            "E2E_ST_BASE": gw.url,
            "E2E_ST_TOKEN": gw.token,
            "E2E_ST_FIXTURES": json.dumps(fixtures),
            "E2E_ST_REQUEST_LOG": str(request_log),
        }
        log = LOGS / "schemathesis.log"
        started = time.monotonic()
        with open(log, "w") as out:
            run = subprocess.run([str(a) for a in argv], env=st_env, stdout=out, stderr=subprocess.STDOUT,
                                 timeout=600, cwd=tmp_path)
        seconds = time.monotonic() - started
        output = log.read_text(errors="replace")
        summary = output[output.rfind("=== SUMMARY ==="):] if "=== SUMMARY ===" in output else output[-4000:]

        requests = [json.loads(line) for line in request_log.read_text().splitlines()] if request_log.exists() else []
        per_op = collections.Counter(f"{r['method']} {r['path']}" for r in requests)
        per_op_status = collections.defaultdict(collections.Counter)
        for r in requests:
            per_op_status[f"{r['method']} {r['path']}"][r["status"]] += 1
        statuses = collections.Counter(r["status"] for r in requests)
        on_fixtures = sum(r["fixture"] for r in requests)
        print(f"\n  schemathesis (checks {checks}): exit {run.returncode} in {seconds:.0f}s; {len(requests)} requests "
              f"({on_fixtures} to the fixture adapters) over {len(per_op)} operations")
        documented = {f"{m.upper()} {p}" for p, ops in json.loads(SPEC.read_text())["paths"].items() for m in ops}
        for op in sorted(per_op_status, key=lambda op: (op not in documented, op)):
            if op in documented:
                print(f"  {op}: {per_op[op]} requests, statuses {dict(sorted(per_op_status[op].items()))}")
        undocumented = {op: c for op, c in per_op_status.items() if op not in documented}
        print(f"  undocumented methods: {sum(per_op[op] for op in undocumented)} requests, statuses "
              f"{dict(sum(undocumented.values(), collections.Counter()))}")
        print(f"  statuses: {dict(sorted(statuses.items()))}")
        print("  " + summary.replace("\n", "\n  "))

        assert run.returncode == 0, f"schemathesis failed (exit {run.returncode}); full output in {log}:\n{output[-12000:]}"
        server_errors = [r for r in requests if r["status"] >= 500]
        assert not server_errors, f"{len(server_errors)} 5xx responses: {server_errors[:10]}"
        assert documented <= set(per_op), f"operations never called: {documented - set(per_op)}"
        assert statuses[200] and statuses[404] and statuses[400], f"expected 200s, 400s and 404s: {statuses}"
    finally:
        children = descendants(gw.pid)
        code = gw.stop()
    left = wait_gone(lambda: still_running(children), timeout=10)
    orphans = wait_gone(lambda: marked(marker))
    print(f"  gateway exited {code}; it had {len(children)} child processes: "
          f"{sorted({c.split(' ')[0] for _, c in children.values()})}")
    assert code == 0, f"gateway exit code {code} on SIGTERM\n{gw.proc.tail()}"
    assert not left, f"processes of the gateway still running after it stopped: {left}"
    assert not orphans, f"processes of the test's adapters still running: {orphans}"
