#!/usr/bin/env bash
# The demo: Envoy with the jwtguard filter in front of an echo upstream. Shows a valid token
# accepted (with the claims the upstream received), requests refused, then waits for Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.demo
mkdir -p "$state"
demo=target/release/jwtguard-demo
wasm=target/jwtguard.wasm

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_for() { # url, what
  for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$2 did not come up; see $state/*.log" >&2; exit 1
}

"$demo" keygen "$state/keys"
jwks=$("$demo" jwks "$state/keys")
python3 - "$wasm" "$jwks" <<'PY' > "$state/envoy.yaml"
import json, sys, pathlib
text = pathlib.Path("envoy/envoy.yaml").read_text()
print(text.replace("@WASM@", str(pathlib.Path(sys.argv[1]).resolve())).replace("@JWKS@", json.dumps(sys.argv[2])))
PY

"$demo" upstream --listen 127.0.0.1:8081 > "$state/upstream.log" 2>&1 & pids+=($!)
.venv/bin/envoy -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart --log-path "$state/envoy.log" & pids+=($!)
wait_for http://127.0.0.1:9901/ready "Envoy"
wait_for http://127.0.0.1:8081/ "the upstream"
until [ "$(curl -s http://127.0.0.1:9901/ready)" = "LIVE" ]; do sleep 0.1; done

token=$("$demo" mint "$state/keys" --sub alice)
admin_token=$("$demo" mint "$state/keys" --sub root --scope "orders:read admin")
expired=$("$demo" mint "$state/keys" --sub alice --ttl=-300)

show() { # description, curl args...
  local what=$1; shift
  echo
  echo "== $what"
  printf '$ curl -i%s\n' "$(printf ' %q' "$@")" | sed -E 's/(ey[A-Za-z0-9_-]{10})[A-Za-z0-9_.-]+/\1…/g'
  curl -s -i "$@" | sed -E 's/^/   /'
  echo
}

show "a valid token: 200, and the upstream sees the verified claims" -H "Authorization: Bearer $token" http://127.0.0.1:10000/orders
show "no token: 401 with a bare challenge" http://127.0.0.1:10000/orders
show "an expired token: 401 invalid_token" -H "Authorization: Bearer $expired" http://127.0.0.1:10000/orders
show "a route that needs scope admin: 403 insufficient_scope" -H "Authorization: Bearer $token" http://127.0.0.1:10000/admin
show "the same route with an admin token: 200" -H "Authorization: Bearer $admin_token" http://127.0.0.1:10000/admin
show "a spoofed identity header on a public route never reaches the upstream" -H "x-jwt-sub: mallory" http://127.0.0.1:10000/public

cat <<MSG

Running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901), echo upstream on 127.0.0.1:8081.
Try it yourself:
  TOKEN=\$($demo mint $state/keys --sub alice)
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/orders
  curl -s http://127.0.0.1:9901/stats/prometheus | grep jwtguard
Ctrl-C stops everything.
MSG
[ -n "${JWTGUARD_DEMO_NO_WAIT:-}" ] && exit 0
wait
