#!/usr/bin/env bash
# The demo: Redis, the revocation service, Envoy with the jwtguard filter, and an echo upstream.
# Walks through the story — a token accepted (with the claims the upstream received), logged out
# at the proxy and refused, "log out everywhere", a new login accepted — then leaves everything
# running until Ctrl-C and stops what it started. JWTGUARD_BUILD=module runs it with the Envoy
# dynamic module (envoy/envoy-module.yaml, `make module`) instead of the proxy-wasm filter.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.demo
mkdir -p "$state/redis"
demo=target/release/jwtguard-demo
service=target/release/jwtguard-revocation
wasm=target/jwtguard.wasm
case "${JWTGUARD_BUILD:-wasm}" in
  wasm) envoy_config=envoy/envoy.yaml ;;
  # Envoy finds the module by name in the search path (docs/builds.md).
  module) envoy_config=envoy/envoy-module.yaml; export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$PWD/target/module ;;
  *) echo "JWTGUARD_BUILD=$JWTGUARD_BUILD: expected wasm or module" >&2; exit 1 ;;
esac

for port in 6390 8080 8081 9901 10000; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use; the demo needs 6390, 8080, 8081, 9901 and 10000" >&2
    exit 1
  fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_for() { # url, what
  for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$2 did not come up; see $state/*.log" >&2; exit 1
}

# Credentials for this run only: one the filter uses to ask, one it uses to revoke.
status_credential=$(openssl rand -hex 16)
write_credential=$(openssl rand -hex 16)

"$demo" keygen "$state/keys"
jwks=$("$demo" jwks "$state/keys")
# The demo's key stands for the identity provider: it signs the access tokens and its
# back-channel logout tokens, which the service trusts through this signals configuration.
printf '%s' "$jwks" > "$state/idp-jwks.json"
cat > "$state/signals.json" <<JSON
{"issuers": [{"issuer": "https://demo.jwtguard.local", "audiences": ["jwtguard"], "algorithms": ["RS256"],
              "local_jwks": {"filename": "$PWD/$state/idp-jwks.json"}}]}
JSON
python3 - "$envoy_config" "$wasm" "$jwks" "$status_credential" "$write_credential" <<'PY' > "$state/envoy.yaml"
import json, sys, pathlib
text = pathlib.Path(sys.argv.pop(1)).read_text()
for placeholder, value in [("@WASM@", str(pathlib.Path(sys.argv[1]).resolve())), ("@JWKS@", json.dumps(sys.argv[2])),
                           ("@STATUS_CREDENTIAL@", sys.argv[3]), ("@WRITE_CREDENTIAL@", sys.argv[4])]:
    text = text.replace(placeholder, value)
print(text)
PY

redis-server --port 6390 --bind 127.0.0.1 --appendonly yes --dir "$state/redis" --logfile redis.log & pids+=($!)
until [ "$(redis-cli -p 6390 ping 2>/dev/null)" = "PONG" ]; do sleep 0.1; done
JWTGUARD_REVOCATION_CREDENTIALS=$write_credential JWTGUARD_STATUS_CREDENTIALS=$status_credential \
  "$service" serve --listen 127.0.0.1:8080 --redis-url redis://127.0.0.1:6390 --log-format text \
  --signals-config "$state/signals.json" \
  > "$state/revocation.log" 2>&1 & pids+=($!)
"$demo" upstream --listen 127.0.0.1:8081 > "$state/upstream.log" 2>&1 & pids+=($!)
.venv/bin/envoy -c "$state/envoy.yaml" --concurrency 2 --disable-hot-restart --log-path "$state/envoy.log" & pids+=($!)
wait_for http://127.0.0.1:8080/healthz "the revocation service"
wait_for http://127.0.0.1:8081/ "the upstream"
wait_for http://127.0.0.1:9901/ready "Envoy"
until [ "$(curl -s http://127.0.0.1:9901/ready)" = "LIVE" ]; do sleep 0.1; done

mint() { "$demo" mint "$state/keys" "$@"; }
refused_everywhere() { # token: polls (bounded) until both Envoy workers refuse it — the feed brings it in milliseconds
  for _ in $(seq 1 100); do
    a=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" http://127.0.0.1:10000/orders)
    b=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" http://127.0.0.1:10000/orders)
    [ "$a$b" = "401401" ] && return 0
    sleep 0.02
  done
}
show() { # description, curl args...
  local what=$1; shift
  echo
  echo "== $what"
  printf '$ curl -i%s\n' "$(printf ' %q' "$@")" | sed -E 's/(ey[A-Za-z0-9_-]{10})[A-Za-z0-9_.-]+/\1…/g'
  curl -s -i "$@" | tr -d '\r' | grep -Eiv '^(date|server|content-length|x-envoy-upstream-service-time|x-request-id):' | sed -E 's/^/   /'
  echo
}

token=$(mint --sub alice)
show "a valid token: 200, and the upstream sees the verified claims" -H "Authorization: Bearer $token" http://127.0.0.1:10000/orders
show "no token: 401 with a bare challenge" http://127.0.0.1:10000/orders
show "an expired token: 401 invalid_token" -H "Authorization: Bearer $(mint --sub alice --ttl=-300)" http://127.0.0.1:10000/orders
show "a route that needs scope admin: 403 insufficient_scope" -H "Authorization: Bearer $token" http://127.0.0.1:10000/admin
show "log out at the proxy: the filter revokes the token through the service, 204" -X POST -H "Authorization: Bearer $token" http://127.0.0.1:10000/logout
show "the same token now: 401 token revoked (every Envoy worker has it from the revocation feed within milliseconds)" -H "Authorization: Bearer $token" http://127.0.0.1:10000/orders

laptop=$(mint --sub bob)
phone=$(mint --sub bob)
show "bob is logged in on his phone: 200" -H "Authorization: Bearer $phone" http://127.0.0.1:10000/orders
show "bob logs out everywhere from his laptop: 204" -X POST -H "Authorization: Bearer $laptop" http://127.0.0.1:10000/logout-all
refused_everywhere "$phone"
show "his phone's token, issued before: 401 token revoked" -H "Authorization: Bearer $phone" http://127.0.0.1:10000/orders
second=$(date +%s); until [ "$(date +%s)" -gt "$second" ]; do sleep 0.05; done # a login in a later second than the cutoff
show "a new login afterwards: 200" -H "Authorization: Bearer $(mint --sub bob)" http://127.0.0.1:10000/orders

# Session ids are fresh each run: Redis keeps what earlier runs revoked (appendonly).
web_session=web-$(openssl rand -hex 4)
carol_web=$(mint --sub carol --sid "$web_session")
carol_app=$(mint --sub carol --sid "app-$(openssl rand -hex 4)")
show "carol, logged in at the identity provider in two sessions (sid claim): 200" -H "Authorization: Bearer $carol_web" http://127.0.0.1:10000/orders
logout_token=$("$demo" logout-token "$state/keys" --sid "$web_session")
show "she logs out of her web session at the identity provider, which sends an OpenID back-channel logout to the service: 200" \
  -X POST --data-urlencode "logout_token=$logout_token" http://127.0.0.1:8080/v1/backchannel-logout
refused_everywhere "$carol_web"
show "that session's token, at the proxy: 401 token revoked — no application was involved" -H "Authorization: Bearer $carol_web" http://127.0.0.1:10000/orders
show "her other session: 200" -H "Authorization: Bearer $carol_app" http://127.0.0.1:10000/orders

cat <<MSG

Running: Envoy on 127.0.0.1:10000 (admin 127.0.0.1:9901), the revocation service on 127.0.0.1:8080
(Redis on 127.0.0.1:6390), the echo upstream on 127.0.0.1:8081. Logs in $state/. Try it yourself:
  TOKEN=\$($demo mint $state/keys --sub alice)
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/orders
  curl -i -X POST -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/logout
  curl -i -H "Authorization: Bearer \$TOKEN" http://127.0.0.1:10000/orders
  curl -s http://127.0.0.1:9901/stats/prometheus | grep jwtguard
  curl -s http://127.0.0.1:8080/metrics | grep jwtguard
Ctrl-C stops everything.
MSG
[ -n "${JWTGUARD_DEMO_NO_WAIT:-}" ] && exit 0
wait
