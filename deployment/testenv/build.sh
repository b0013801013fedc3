#!/usr/bin/env bash
# Builds the Kubernetes control plane of the tests and of `cargo xtask cluster up` from source,
# through the Go module proxy: kube-apiserver, kube-controller-manager and kubectl from
# k8s.io/kubernetes (the wrapper module in k8s/), etcd from etcd's server module (etcd/), and
# Helm from helm.sh/helm/v3 (helm/) for the chart checks of deployment/helm.
#
#   deployment/testenv/build.sh           build what is missing, print the binaries' directory
#   deployment/testenv/build.sh --regen   rewrite k8s/go.mod from upstream's staging list (a new
#                                         Kubernetes version: edit K8S_VERSION below first)
#
# Binaries go to <target>/testenv/k8s-<version>-<go.sum digest>/ (CARGO_TARGET_DIR or ./target),
# so a second run, or a CI cache of target/, reuses them; a changed go.sum builds a new set.
# Nothing built here is committed. Needs Go >= 1.26 (GOTOOLCHAIN=local: no toolchain download).
set -euo pipefail

K8S_VERSION=1.37.2
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

regen() {
  # k8s.io/kubernetes maps its staging modules (k8s.io/api, k8s.io/client-go, ...) to ./staging
  # with replace directives that consumers ignore, and requires them at v0.0.0: each must be
  # replaced by its published v0.<minor>.<patch>. The list is read from upstream's own go.mod.
  local staging_version="v0.${K8S_VERSION#1.}" upmod
  upmod="$(cd "$here/k8s" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v${K8S_VERSION}" |
    sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')"
  mapfile -t staging < <(sed -n 's#^\s*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$upmod" | sort -u)
  [ "${#staging[@]}" -gt 25 ] || { echo "build.sh: unexpected staging list: ${staging[*]}" >&2; exit 1; }
  {
    echo '// The Kubernetes control plane of the tests (kube-apiserver, kube-controller-manager, kubectl),'
    echo '// built from k8s.io/kubernetes through the module proxy by deployment/testenv/build.sh.'
    echo '// k8s.io/kubernetes resolves its staging modules with local replaces that consumers ignore,'
    echo '// so each is replaced here by its published v0.x version. Regenerate with build.sh --regen.'
    echo 'module mcp-gateway/testenv/k8s'
    echo
    echo 'go 1.26.0'
    echo
    echo 'tool ('
    for c in kube-apiserver kube-controller-manager kubectl; do echo "	k8s.io/kubernetes/cmd/$c"; done
    echo ')'
    echo
    echo "require k8s.io/kubernetes v${K8S_VERSION}"
    echo
    echo 'replace ('
    for m in "${staging[@]}"; do echo "	$m => $m ${staging_version}"; done
    echo ')'
  } >"$here/k8s/go.mod"
  (cd "$here/k8s" && GOFLAGS=-mod=mod go mod tidy)
  echo "build.sh: k8s/go.mod regenerated for v${K8S_VERSION} (${#staging[@]} staging modules)" >&2
}

digest() { sha256sum "$1" | cut -c1-12; }

build_k8s() {
  local out="$1" minor ld
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  # The variables the release build stamps (k8s.io/component-base/version/base.go), so
  # /version and `--version` report the real version instead of v0.0.0-master.
  ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=v${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ld="$ld -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$out.partial"
  (cd "$here/k8s" && go build -trimpath -tags providerless -ldflags "$ld" -o "$out.partial/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl)
  mv "$out.partial" "$out"
}

build_etcd() {
  local out="$1" version
  version="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")"
  mkdir -p "$out.partial"
  (cd "$here/etcd" && go build -trimpath \
    -ldflags "-s -w" -o "$out.partial/etcd" .)
  mv "$out.partial" "$out"
  echo "build.sh: etcd ${version}" >&2
}

build_helm() {
  local out="$1" version client_minor ld
  version="$(helm_version)"
  # The stamps of Helm's own Makefile: its version, and the Kubernetes version it renders
  # .Capabilities for and lints deprecations against (from the client-go it is built with).
  client_minor="$(sed -n 's#^\s*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$here/helm/go.mod")"
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=${version} -X helm.sh/helm/v3/internal/version.metadata="
  ld="$ld -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=${client_minor}"
  done
  mkdir -p "$out.partial"
  (cd "$here/helm" && go build -trimpath -ldflags "$ld" -o "$out.partial/helm" helm.sh/helm/v3/cmd/helm)
  mv "$out.partial" "$out"
  echo "build.sh: helm ${version}" >&2
}

helm_version() { sed -n 's#^\s*helm.sh/helm/v3 \(v[0-9.]*\)\( // indirect\)\?$#\1#p' "$here/helm/go.mod"; }

if [ "${1:-}" = "--regen" ]; then
  regen
fi

command -v go >/dev/null || { echo "build.sh: Go is not installed (needs Go >= 1.26)" >&2; exit 1; }
etcd_version="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$here/etcd/go.mod")"
k8s_dir="$target/testenv/k8s-v${K8S_VERSION}-$(digest "$here/k8s/go.sum")"
etcd_dir="$target/testenv/etcd-${etcd_version}-$(digest "$here/etcd/go.sum")"
helm_dir="$target/testenv/helm-$(helm_version)-$(digest "$here/helm/go.sum")"

# Parallel callers (tests of several binaries) build once: the first takes the lock.
mkdir -p "$target/testenv"
exec 9>"$target/testenv/.build.lock"
flock 9
start=$(date +%s)
[ -x "$k8s_dir/kube-apiserver" ] || { rm -rf "$k8s_dir.partial"; build_k8s "$k8s_dir"; }
[ -x "$etcd_dir/etcd" ] || { rm -rf "$etcd_dir.partial"; build_etcd "$etcd_dir"; }
[ -x "$helm_dir/helm" ] || { rm -rf "$helm_dir.partial"; build_helm "$helm_dir"; }
elapsed=$(($(date +%s) - start))
[ "$elapsed" -lt 2 ] || echo "build.sh: built in ${elapsed}s" >&2
# The one directory the tests look in: links to this version's binaries, each replaced
# atomically (rename), so a test reading them while another run builds never sees a gap.
bin="$target/testenv/bin"
mkdir -p "$bin"
link() { ln -sfn "$1" "$bin/.$2.new" && mv -T "$bin/.$2.new" "$bin/$2"; }
for b in kube-apiserver kube-controller-manager kubectl; do link "$k8s_dir/$b" "$b"; done
link "$etcd_dir/etcd" etcd
link "$helm_dir/helm" helm
echo "$bin"
