#!/usr/bin/env bash
# The built-in dashboard in a real browser: three members as processes, Debian's
# headless Chromium loads /dashboard from one of them and the test reads the
# page's DOM after its scripts ran; then the leader is killed (-9) and the page,
# loaded from a survivor, must show it down and the survivors' new roles.
# Screenshots of both states go to target/ (CI keeps them as artifacts):
# target/dashboard.png and target/dashboard-member-down.png.
#
# Usage: compat/dashboard.sh [path/to/mainstay]   (default: target/debug/mainstay)
# Exits non-zero on any failure, or when chromium or etcdctl is missing.
set -euo pipefail

BIN=${1:-target/debug/mainstay}
for tool in chromium etcdctl curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$tool not found (apt-get install chromium etcd-client curl)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "mainstay binary not found at $BIN" >&2; exit 1; }
export ETCDCTL_API=3
OUT=$(cd "$(dirname "$BIN")/.." && pwd)
WORK=$(mktemp -d)
BASE=${DASHBOARD_BASE_PORT:-14379}
NAMES=(d1 d2 d3)
declare -a CLIENT PEER PIDS
CLUSTER=""
for i in 0 1 2; do
  CLIENT[$i]=$((BASE + i * 10))
  PEER[$i]=$((BASE + i * 10 + 1))
  CLUSTER+="${CLUSTER:+,}${NAMES[$i]}=http://127.0.0.1:${PEER[$i]}"
done
cleanup() {
  for pid in "${PIDS[@]:-}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
for i in 0 1 2; do
  "$BIN" serve --name "${NAMES[$i]}" --data-dir "$WORK/${NAMES[$i]}" \
    --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --initial-cluster "$CLUSTER" >"$WORK/${NAMES[$i]}.log" 2>&1 &
  PIDS[$i]=$!
done
for i in 0 1 2; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:${CLIENT[$i]}/health" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:${CLIENT[$i]}/health" >/dev/null || { echo "member $i never became healthy"; cat "$WORK/${NAMES[$i]}.log"; exit 1; }
done

browse() { # browse URL [screenshot]: the DOM after scripts ran
  local args=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run
    --disable-background-networking --disable-component-update --disable-sync
    --user-data-dir="$WORK/chrome" --window-size=1280,800 --virtual-time-budget=5000)
  if [ -n "${2:-}" ]; then
    chromium "${args[@]}" --screenshot="$2" "$1" >/dev/null 2>&1
  fi
  chromium "${args[@]}" --dump-dom "$1" 2>/dev/null
}
fail() { echo "FAIL: $*"; echo "$dom" | sed -n '/<tbody>/,/<\/tbody>/p' | head -20; exit 1; }
rows() { echo "$dom" | grep -o "<tr data-member=\"[^\"]*\" data-state=\"[^\"]*\" data-role=\"[^\"]*\"" || true; }

dom=$(browse "http://127.0.0.1:${CLIENT[0]}/dashboard" "$OUT/dashboard.png")
[ "$(rows | grep -c 'data-state="up"')" = 3 ] || fail "three members up"
[ "$(rows | grep -c 'data-role="leader"')" = 1 ] || fail "one leader"
echo "$dom" | grep -q 'class="ok">Healthy: 3 of 3 voting members up; the cluster survives 1 more failure' || fail "healthy banner"
echo "$dom" | grep -q '(φ ' || fail "round trips in the matrix"
echo "ok: three members up, one leader, healthy banner, round trips ($OUT/dashboard.png)"

leader=""
for i in 0 1 2; do
  if rows | grep -q "data-member=\"${NAMES[$i]}\" data-state=\"up\" data-role=\"leader\""; then leader=$i; fi
done
[ -n "$leader" ] || fail "leader named"
kill -9 "${PIDS[$leader]}"
survivor=$(( (leader + 1) % 3 ))
# A new leader within a few election timeouts.
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:${CLIENT[$survivor]}/health" >/dev/null 2>&1 && break
  sleep 0.2
done
dom=$(browse "http://127.0.0.1:${CLIENT[$survivor]}/dashboard" "$OUT/dashboard-member-down.png")
rows | grep -q "data-member=\"${NAMES[$leader]}\" data-state=\"down\"" || fail "the killed leader shown down"
[ "$(rows | grep -c 'data-state="up"')" = 2 ] || fail "two survivors up"
[ "$(rows | grep -c 'data-state="up" data-role="leader"')" = 1 ] || fail "a survivor leads"
[ "$(rows | grep -c 'data-state="up" data-role="follower"')" = 1 ] || fail "the other survivor follows"
echo "$dom" | grep -q 'class="warn">Quorum at risk: 2 of 3 voting members up. One more failure stops writes.' || fail "quorum-at-risk banner"
echo "ok: killed leader ${NAMES[$leader]} shown down, survivors lead and follow, quorum-at-risk banner ($OUT/dashboard-member-down.png)"
