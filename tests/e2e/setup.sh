#!/usr/bin/env bash
# Installs the end-to-end test tools under target/e2e/ and nowhere else; safe to run again
# (a step is skipped when what it installs is already there at the pinned version).
#   target/e2e/venv   Python venv: the official MCP SDK (`mcp`), pytest and schemathesis
#   target/e2e/node   npm packages: server-everything, the conformance suite, the TypeScript SDK and
#                     express (for conformance_fixture.mjs, copied here to run), and a Node 22 build
#                     when the machine's node is older (the conformance suite needs Node >= 22)
#   target/e2e/bin/node22  -> the Node >= 22 binary the tests use
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
E2E="$ROOT/target/e2e"
PY_SPECS=("mcp>=2.3,<3" "pytest>=8,<10" "schemathesis==4.32.5")  # schemathesis: test_api_schema.py
NPM_SPECS=("@modelcontextprotocol/server-everything@2026.8.31" "@modelcontextprotocol/conformance@0.1.16"
           "@modelcontextprotocol/sdk@1.32.2" "express@5.3.0")  # the last two: conformance_fixture.mjs
NODE22_VERSION=22.23.3

die() { echo "tests/e2e/setup.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 not found: install Python >= 3.10 with venv (Debian: apt-get install -y python3 python3-venv)"
command -v node >/dev/null || die "node not found: install Node.js >= 20 (Debian: apt-get install -y nodejs npm)"
command -v npm >/dev/null || die "npm not found: install npm (Debian: apt-get install -y npm)"
mkdir -p "$E2E/bin" "$E2E/node"

# --- Python venv ---------------------------------------------------------------------------
stamp="$E2E/venv/.installed"
if [ ! -x "$E2E/venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PY_SPECS[*]}" ]; then
  echo "setup: python venv at $E2E/venv (${PY_SPECS[*]})"
  python3 -m venv "$E2E/venv" || die "python3 -m venv failed: install the venv module (Debian: apt-get install -y python3-venv)"
  "$E2E/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_SPECS[@]}" || die "pip install ${PY_SPECS[*]} failed"
  echo "${PY_SPECS[*]}" > "$stamp"
fi

# --- npm packages --------------------------------------------------------------------------
arch=$(uname -m)
case "$arch" in x86_64) arch=x64 ;; aarch64 | arm64) arch=arm64 ;; esac
specs=("${NPM_SPECS[@]}")
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
  specs+=("node-linux-$arch@$NODE22_VERSION")
fi
missing=()
for spec in "${specs[@]}"; do
  name=${spec%@*} want=${spec##*@}
  have=$(node -p "require('$E2E/node/node_modules/$name/package.json').version" 2>/dev/null || true)
  [ "$have" = "$want" ] || missing+=("$spec")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: npm install ${missing[*]}"
  [ -f "$E2E/node/package.json" ] || echo '{"private": true}' > "$E2E/node/package.json"
  npm install --prefix "$E2E/node" --no-audit --no-fund --loglevel=error "${missing[@]}" ||
    die "npm install ${missing[*]} failed"
fi

# --- node22 --------------------------------------------------------------------------------
if [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 22 ]; then
  ln -sf "$(command -v node)" "$E2E/bin/node22"
else
  ln -sf "$E2E/node/node_modules/node-linux-$arch/bin/node" "$E2E/bin/node22"
fi
"$E2E/bin/node22" --version >/dev/null || die "$E2E/bin/node22 does not run"
echo "setup: ok ($("$E2E/venv/bin/python" -c 'import importlib.metadata as m; print("mcp", m.version("mcp"))'), node22 $("$E2E/bin/node22" --version))"
