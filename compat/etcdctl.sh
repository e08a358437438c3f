#!/usr/bin/env bash
# Compatibility tier: drives Debian's etcdctl (package etcd-client) against a real
# three-member Mainstay cluster started from the built binary, checking every
# output, then kill -9s the leader and checks failover and catch-up. A
# snapshot saved from Mainstay is restored into Debian's etcd (etcd-server),
# which must serve its keys, revisions and leases.
#
# Usage: compat/etcdctl.sh [path/to/mainstay]   (default: target/release/mainstay)
# Exits non-zero on any failure, or when etcdctl is missing.
set -euo pipefail

BIN=${1:-target/release/mainstay}
for tool in etcdctl openssl etcd; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$tool not found: install the Debian packages etcd-client, openssl and etcd-server" >&2
    exit 1
  fi
done
if [ ! -x "$BIN" ]; then
  echo "mainstay binary not found at $BIN" >&2
  exit 1
fi
export ETCDCTL_API=3

WORK=$(mktemp -d)
# Below the kernel's ephemeral range (32768-60999 here): an outgoing connection
# of another process could otherwise hold one of our ports when a member binds it.
BASE=${COMPAT_BASE_PORT:-12379}
NAMES=(c1 c2 c3)
declare -a CLIENT PEER PIDS
CLUSTER=""
for i in 0 1 2; do
  CLIENT[$i]=$((BASE + i * 10))
  PEER[$i]=$((BASE + i * 10 + 1))
  CLUSTER+="${CLUSTER:+,}${NAMES[$i]}=http://127.0.0.1:${PEER[$i]}"
done
# Endpoints in URL form: etcdctl 3.4 then sends the URL as the HTTP/2 authority
# of Maintenance calls, which Mainstay must accept as etcd does.
ALL="http://127.0.0.1:${CLIENT[0]},http://127.0.0.1:${CLIENT[1]},http://127.0.0.1:${CLIENT[2]}"

# start_member POSITION [STATE [CLUSTER [EXTRA FLAGS...]]]
start_member() {
  local i=$1 state=${2:-new} cluster=${3:-$CLUSTER}
  shift $(($# < 3 ? $# : 3))
  "$BIN" serve --name "${NAMES[$i]}" --data-dir "$WORK/${NAMES[$i]}" \
    --listen-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${CLIENT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${PEER[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-token compat \
    --initial-cluster-state "$state" "$@" >>"$WORK/${NAMES[$i]}.log" 2>&1 &
  PIDS[$i]=$!
}

cleanup() {
  for pid in "${PIDS[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${FAILED:-0}" != 0 ]; then
    for name in "${NAMES[@]}"; do echo "--- $name log (tail)"; tail -n 20 "$WORK/$name.log" || true; done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

ctl() { etcdctl --dial-timeout=2s --command-timeout=10s "$@" 2>&1; }
ep() { echo "http://127.0.0.1:${CLIENT[$1]}"; }

PASSED=0
FAILED=0
check() {
  local name=$1 expected=$2 actual=$3
  if [ "$expected" == "$actual" ]; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name"
    echo "  expected: $(printf '%q' "$expected")"
    echo "  actual:   $(printf '%q' "$actual")"
  fi
}
check_contains() {
  local name=$1 needle=$2 actual=$3
  if [[ "$actual" == *"$needle"* ]]; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name: $(printf '%q' "$needle") not in $(printf '%q' "$actual")"
  fi
}

wait_healthy() {
  local endpoints=$1
  for _ in $(seq 1 100); do
    if ctl --endpoints="$endpoints" endpoint health >/dev/null; then return 0; fi
    for i in "${!PIDS[@]}"; do
      if ! kill -0 "${PIDS[$i]}" 2>/dev/null && [ -z "${KILLED[$i]:-}" ]; then
        echo "member ${NAMES[$i]} exited while waiting for the cluster:" >&2
        grep -v '^ ' "$WORK/${NAMES[$i]}.log" | tail -n 5 >&2
        FAILED=1
        return 1
      fi
    done
    sleep 0.1
  done
  echo "cluster never became healthy at $endpoints" >&2
  return 1
}

# Position (0..2) of the leader, from endpoint status.
leader_position() {
  local fields leader
  fields=$(ctl --endpoints="$(ep 0)" endpoint status -w fields || true)
  for i in 0 1 2; do
    fields=$(ctl --endpoints="$(ep "$i")" endpoint status -w fields) || continue
    leader=$(echo "$fields" | sed -n 's/^"Leader" : //p')
    if [ -n "$leader" ] && echo "$fields" | grep -q "^\"MemberID\" : $leader\$"; then
      echo "$i"
      return 0
    fi
  done
  return 1
}

for i in 0 1 2; do start_member "$i"; done
wait_healthy "$ALL"
LEADER=$(leader_position)
FOLLOWER=$(((LEADER + 1) % 3))
echo "leader is ${NAMES[$LEADER]}"

# --- put -------------------------------------------------------------------
check "put" "OK" "$(ctl --endpoints="$(ep "$LEADER")" put k1 v1)"
check "put to a follower is forwarded" "OK" "$(ctl --endpoints="$(ep "$FOLLOWER")" put k2 v2)"
check "put --prev-kv" "$(printf 'OK\nk1\nv1')" "$(ctl --endpoints="$ALL" put k1 v1b --prev-kv)"
check "put --ignore-value" "OK" "$(ctl --endpoints="$ALL" put k1 --ignore-value)"
check "get after --ignore-value keeps the value" "v1b" "$(ctl --endpoints="$ALL" get k1 --print-value-only)"
check_contains "put --ignore-value on a missing key" "etcdserver: key not found" \
  "$(ctl --endpoints="$ALL" put missing --ignore-value || true)"

# --- get -------------------------------------------------------------------
for k in a1 a2 a3 b1; do ctl --endpoints="$ALL" put "$k" "x$k" >/dev/null; done
REV_A=$(ctl --endpoints="$ALL" get a1 -w fields | sed -n 's/^"ModRevision" : //p')
ctl --endpoints="$ALL" put a1 changed >/dev/null
check "get" "$(printf 'k1\nv1b')" "$(ctl --endpoints="$(ep "$FOLLOWER")" get k1)"
check "get --prefix" "$(printf 'a1\nchanged\na2\nxa2\na3\nxa3')" "$(ctl --endpoints="$ALL" get a --prefix)"
check "get --prefix --keys-only" "$(printf 'a1\n\na2\n\na3')" "$(ctl --endpoints="$ALL" get a --prefix --keys-only)"
check "get --limit" "$(printf 'a1\nchanged\na2\nxa2')" "$(ctl --endpoints="$ALL" get a --prefix --limit 2)"
check "get --from-key" "$(printf 'a3\n\nb1\n\nk1\n\nk2')" "$(ctl --endpoints="$ALL" get a3 --from-key --keys-only)"
check "get --rev" "xa1" "$(ctl --endpoints="$ALL" get a1 --rev="$REV_A" --print-value-only)"
check "get --print-value-only" "xa2" "$(ctl --endpoints="$ALL" get a2 --print-value-only)"
check "get --sort-by=VALUE --order=DESCEND" "$(printf 'a3\na2\na1')" \
  "$(ctl --endpoints="$ALL" get a --prefix --sort-by=VALUE --order=DESCEND --keys-only | sed '/^$/d')"
check "get --sort-by=MODIFY --order=ASCEND" "$(printf 'a2\na3\na1')" \
  "$(ctl --endpoints="$ALL" get a --prefix --sort-by=MODIFY --order=ASCEND --keys-only | sed '/^$/d')"
check "get --consistency=s on a follower" "xa2" "$(ctl --endpoints="$(ep "$FOLLOWER")" get a2 --consistency=s --print-value-only)"
JSON=$(ctl --endpoints="$ALL" get a --prefix --limit 1 -w json)
check_contains "get -w json count" '"count":3' "$JSON"
check_contains "get -w json more" '"more":true' "$JSON"
check_contains "get -w json header" '"raft_term":' "$JSON"
if etcdctl get --help 2>&1 | grep -q -- '--count-only'; then
  check_contains "get --count-only" '"Count" : 3' "$(ctl --endpoints="$ALL" get a --prefix --count-only -w fields)"
else
  echo "note this etcdctl ($(etcdctl version | head -n1)) has no --count-only; count_only is covered by cargo tests"
fi

# --- del -------------------------------------------------------------------
check "del" "1" "$(ctl --endpoints="$ALL" del b1)"
check "del of a missing key" "0" "$(ctl --endpoints="$ALL" del b1)"
check "del --prefix --prev-kv" "$(printf '3\na1\nchanged\na2\nxa2\na3\nxa3')" "$(ctl --endpoints="$ALL" del a --prefix --prev-kv)"
for k in z1 z2; do ctl --endpoints="$ALL" put "$k" v >/dev/null; done
check "del --from-key" "2" "$(ctl --endpoints="$ALL" del z --from-key)"

# --- txn -------------------------------------------------------------------
ctl --endpoints="$ALL" put t v >/dev/null
TXN_OK=$(ctl --endpoints="$(ep "$FOLLOWER")" txn <<'EOF'
value("t") = "v"
version("t") = "1"
create("t") > "0"
mod("t") > "0"

put t2 yes
get t

put t2 no

EOF
)
check "txn success branch" "$(printf 'SUCCESS\n\nOK\n\nt\nv')" "$TXN_OK"
TXN_FAIL=$(ctl --endpoints="$ALL" txn <<'EOF'
value("t") = "other"

put t3 yes

put t3 no
del t2

EOF
)
check "txn failure branch" "$(printf 'FAILURE\n\nOK\n\n1')" "$TXN_FAIL"
check "txn effects" "no" "$(ctl --endpoints="$ALL" get t3 --print-value-only)"
MISSING=$(ctl --endpoints="$ALL" txn <<'EOF'
value("nothing") != "x"

put t4 yes

put t4 no

EOF
)
check "txn value compare on a missing key is false" "$(printf 'FAILURE\n\nOK')" "$MISSING"
CREATE=$(ctl --endpoints="$ALL" txn <<'EOF'
create("fresh") = "0"

put fresh 1


EOF
)
check "txn create(missing) = 0" "$(printf 'SUCCESS\n\nOK')" "$CREATE"

# --- compaction ------------------------------------------------------------
REV_NOW=$(ctl --endpoints="$ALL" get t -w fields | sed -n 's/^"Revision" : //p')
check "compaction" "compacted revision $REV_NOW" "$(ctl --endpoints="$ALL" compaction "$REV_NOW")"
check_contains "read below the compacted revision" "etcdserver: mvcc: required revision has been compacted" \
  "$(ctl --endpoints="$ALL" get t --rev=2 || true)"
check_contains "compaction again" "etcdserver: mvcc: required revision has been compacted" \
  "$(ctl --endpoints="$ALL" compaction "$REV_NOW" || true)"

# --- lease -----------------------------------------------------------------
GRANT=$(ctl --endpoints="$(ep "$FOLLOWER")" lease grant 60)
LEASE=$(echo "$GRANT" | sed -n 's/^lease \([0-9a-f]*\) granted with TTL(60s)$/\1/p')
check "lease grant" "yes" "$([ -n "$LEASE" ] && echo yes || echo "$GRANT")"
check "put --lease" "OK" "$(ctl --endpoints="$ALL" put --lease="$LEASE" leased1 v)"
ctl --endpoints="$ALL" put --lease="$LEASE" leased2 v >/dev/null
check_contains "lease timetolive --keys" "lease $LEASE granted with TTL(60s), remaining(" \
  "$(ctl --endpoints="$ALL" lease timetolive "$LEASE" --keys)"
check_contains "lease timetolive lists the attached keys" "attached keys([leased1 leased2])" \
  "$(ctl --endpoints="$ALL" lease timetolive "$LEASE" --keys)"
check_contains "lease list" "$LEASE" "$(ctl --endpoints="$ALL" lease list)"
check "lease keep-alive --once" "lease $LEASE keepalived with TTL(60)" \
  "$(ctl --endpoints="$(ep "$FOLLOWER")" lease keep-alive --once "$LEASE")"
check "lease revoke" "lease $LEASE revoked" "$(ctl --endpoints="$ALL" lease revoke "$LEASE")"
check "lease revoke deletes the attached keys" "" "$(ctl --endpoints="$ALL" get leased --prefix --keys-only)"
check "lease timetolive of a revoked lease" "lease $LEASE already expired" \
  "$(ctl --endpoints="$ALL" lease timetolive "$LEASE")"
check_contains "put --lease with an unknown lease" "etcdserver: requested lease not found" \
  "$(ctl --endpoints="$ALL" put --lease=1234abcd k v || true)"
SHORT=$(ctl --endpoints="$ALL" lease grant 1 | sed -n 's/^lease \([0-9a-f]*\) granted with TTL(\([0-9]*\)s)$/\1 \2/p')
check "lease grant raises a short TTL to the minimum (1.5 election timeouts)" "2" "${SHORT#* }"
ctl --endpoints="$ALL" put --lease="${SHORT% *}" expiring v >/dev/null
EXPIRED=""
for _ in $(seq 1 50); do
  if [ -z "$(ctl --endpoints="$ALL" get expiring --keys-only)" ]; then EXPIRED=yes; break; fi
  sleep 0.2
done
check "an expired lease's keys are deleted" "yes" "$EXPIRED"

# --- watch -----------------------------------------------------------------
WREV=$(ctl --endpoints="$ALL" put w1 v1 -w fields | sed -n 's/^"Revision" : //p')
ctl --endpoints="$ALL" put w1 v2 >/dev/null
ctl --endpoints="$ALL" put w2 x >/dev/null
ctl --endpoints="$ALL" del w1 >/dev/null
# etcdctl watch never ends by itself: give it time to print the history, then stop it.
watch_for() { timeout "${WATCH_SECONDS:-2}" etcdctl --dial-timeout=2s "$@" 2>&1 || true; }
check "watch --rev replays history" "$(printf 'PUT\nw1\nv1\nPUT\nw1\nv2\nDELETE\nw1\n')" \
  "$(watch_for --endpoints="$(ep "$FOLLOWER")" watch --rev="$WREV" w1)"
check "watch --prefix --rev" "$(printf 'PUT\nw1\nv1\nPUT\nw1\nv2\nPUT\nw2\nx\nDELETE\nw1\n')" \
  "$(watch_for --endpoints="$ALL" watch --prefix --rev="$WREV" w)"
check "watch --prev-kv" "$(printf 'PUT\nw1\nv1\nPUT\nw1\nv1\nw1\nv2\nDELETE\nw1\nv2\nw1\n')" \
  "$(watch_for --endpoints="$ALL" watch --prev-kv --rev="$WREV" w1)"
check "watch -i (interactive)" "$(printf 'PUT\nw2\nx\n')" \
  "$( (echo "watch --rev=$WREV w2"; sleep 4) | watch_for --endpoints="$ALL" watch -i)"
# A revision's events in the order the Txn wrote them (etcd's sub-revision),
# from history on another member and live.
ORDER="$WORK/order-watch.out"
etcdctl --endpoints="$(ep "$FOLLOWER")" watch --prefix o/ >"$ORDER" 2>&1 &
WATCHER=$!
sleep 1
# (-w fields prints a header per operation as well: the first is the Txn's.)
TXN_OUT=$(printf '\nput o/zz 1\nput o/aa 2\nput o/mm 3\n\n\n' |
  ctl --endpoints="$(ep "$LEADER")" txn -w fields)
TREV=$(awk '/^"Revision"/ { print $3; exit }' <<<"$TXN_OUT")
sleep 1
kill "$WATCHER" 2>/dev/null || true
wait "$WATCHER" 2>/dev/null || true
check "watch: a Txn's events in its order (live)" "$(printf 'PUT\no/zz\n1\nPUT\no/aa\n2\nPUT\no/mm\n3')" \
  "$(cat "$ORDER")"
check "watch --rev: a Txn's events in its order (history)" "$(printf 'PUT\no/zz\n1\nPUT\no/aa\n2\nPUT\no/mm\n3\n')" \
  "$(watch_for --endpoints="$(ep "$FOLLOWER")" watch --prefix --rev="$TREV" o/)"
LIVE="$WORK/live-watch.out"
etcdctl --endpoints="$(ep "$FOLLOWER")" watch live >"$LIVE" 2>&1 &
WATCHER=$!
sleep 1
ctl --endpoints="$(ep "$LEADER")" put live now >/dev/null
sleep 1
kill "$WATCHER" 2>/dev/null || true
wait "$WATCHER" 2>/dev/null || true
check "watch sees a live write" "$(printf 'PUT\nlive\nnow')" "$(cat "$LIVE")"

# --- lock and elect (recipes over leases, txn and watch) -------------------
LOCKLOG="$WORK/lock.out"
: >"$LOCKLOG"
etcdctl --endpoints="$ALL" lock --ttl=3 biglock -- sh -c "echo A-in >>$LOCKLOG; sleep 2; echo A-out >>$LOCKLOG" >/dev/null 2>&1 &
HOLDER=$!
sleep 0.7
LOCKED=$(etcdctl --endpoints="$ALL" lock --ttl=3 biglock -- sh -c "echo B-in >>$LOCKLOG; echo B-out >>$LOCKLOG" 2>&1 || true)
wait "$HOLDER" 2>/dev/null || true
[ -z "$LOCKED" ] || echo "second lock holder said: $LOCKED"
check "lock: mutual exclusion between two etcdctl processes" "$(printf 'A-in\nA-out\nB-in\nB-out')" "$(cat "$LOCKLOG")"
etcdctl --endpoints="$ALL" lock --ttl=3 deadlock >/dev/null 2>&1 &
HOLDER=$!
sleep 1
kill -9 "$HOLDER"
wait "$HOLDER" 2>/dev/null || true
check "lock: a killed holder's lock is released when its lease expires" "got" \
  "$(timeout 20 etcdctl --endpoints="$ALL" lock --ttl=3 deadlock echo got 2>&1 || true)"
etcdctl --endpoints="$ALL" elect office p1 >/dev/null 2>&1 &
CANDIDATE1=$!
sleep 1
etcdctl --endpoints="$ALL" elect office p2 >/dev/null 2>&1 &
CANDIDATE2=$!
sleep 0.5
check_contains "elect: the first candidate leads" "p1" "$(watch_for --endpoints="$ALL" elect -l office)"
kill "$CANDIDATE1"
wait "$CANDIDATE1" 2>/dev/null || true
LED=""
for _ in $(seq 1 20); do
  if [[ "$(WATCH_SECONDS=1 watch_for --endpoints="$ALL" elect -l office)" == *p2* ]]; then LED=yes; break; fi
done
check "elect: the second candidate leads after the first resigns" "yes" "$LED"
kill "$CANDIDATE2" 2>/dev/null || true
wait "$CANDIDATE2" 2>/dev/null || true

# --- endpoint status / health, member list --------------------------------
STATUS=$(ctl --endpoints="$ALL" endpoint status)
check "endpoint status lists three members" "3" "$(echo "$STATUS" | grep -c '3.6.0')"
check "endpoint status has one leader" "1" "$(echo "$STATUS" | grep -c ', true, ')"
HASHES=$(ctl --endpoints="$ALL" endpoint hashkv | awk '{print $2}' | sort -u)
check "endpoint hashkv: one hash on every member" "1" "$(echo "$HASHES" | grep -c .)"
LEADER=$(leader_position)
TARGET=$(((LEADER + 1) % 3))
TARGET_ID=$(ctl --endpoints="$(ep "$TARGET")" endpoint status -w fields | sed -n 's/^"MemberID" : //p')
TARGET_HEX=$(printf '%x' "$TARGET_ID")
check_contains "move-leader" "to $TARGET_HEX" \
  "$(ctl --endpoints="$(ep "$LEADER")" move-leader "$TARGET_HEX")"
check "move-leader: the target leads" "$TARGET" "$(leader_position)"
check_contains "move-leader to the leader itself succeeds" "to $TARGET_HEX" \
  "$(ctl --endpoints="$(ep "$TARGET")" move-leader "$TARGET_HEX")"
HEALTH=$(ctl --endpoints="$ALL" endpoint health)
check "endpoint health" "3" "$(echo "$HEALTH" | grep -c 'is healthy')"
MEMBERS=$(ctl --endpoints="$ALL" member list)
check "member list" "3" "$(echo "$MEMBERS" | grep -c 'started')"
for i in 0 1 2; do
  check_contains "member list shows ${NAMES[$i]}" "${NAMES[$i]}, http://127.0.0.1:${PEER[$i]}, http://127.0.0.1:${CLIENT[$i]}" "$MEMBERS"
done

# --- kill -9 the leader ----------------------------------------------------
for n in $(seq 1 30); do ctl --endpoints="$ALL" put "ack/$n" "$n" >/dev/null; done
LEADER=$(leader_position)
OTHERS="$(ep $(((LEADER + 1) % 3))),$(ep $(((LEADER + 2) % 3)))"
kill -9 "${PIDS[$LEADER]}"
wait "${PIDS[$LEADER]}" 2>/dev/null || true
KILLED_AT=$(date +%s%N)
WRITTEN=""
for _ in $(seq 1 100); do
  if [ "$(ctl --endpoints="$OTHERS" put after-kill yes)" == "OK" ]; then WRITTEN=yes; break; fi
  sleep 0.1
done
FAILOVER_MS=$((($(date +%s%N) - KILLED_AT) / 1000000))
check "write after kill -9 of the leader" "yes" "$WRITTEN"
echo "note failover: first write acknowledged ${FAILOVER_MS} ms after kill -9 (election timeout 1000 ms)"
check "acknowledged writes survive the leader's death" "30" \
  "$(ctl --endpoints="$OTHERS" get ack/ --prefix --keys-only | sed '/^$/d' | wc -l)"
start_member "$LEADER"
CAUGHT=""
for _ in $(seq 1 100); do
  if [ "$(ctl --endpoints="$(ep "$LEADER")" get after-kill --consistency=s --print-value-only)" == "yes" ]; then CAUGHT=yes; break; fi
  sleep 0.1
done
check "killed member restarts and catches up" "yes" "$CAUGHT"
check "restarted member has every acknowledged write" "30" \
  "$(ctl --endpoints="$(ep "$LEADER")" get ack/ --prefix --keys-only --consistency=s | sed '/^$/d' | wc -l)"

# --- runtime membership: add a learner, start it, promote it, remove it -----
NAMES[3]=c4
CLIENT[3]=$((BASE + 30))
PEER[3]=$((BASE + 31))
ADD=$(ctl --endpoints="$ALL" member add c4 --learner --peer-urls="http://127.0.0.1:${PEER[3]}")
check_contains "member add --learner" "added to cluster" "$ADD"
check_contains "member add prints the join settings" 'ETCD_INITIAL_CLUSTER_STATE="existing"' "$ADD"
NEW_ID=$(echo "$ADD" | grep -o 'Member [0-9a-f]* added' | awk '{print $2}')
check_contains "member add of a taken peer URL" "etcdserver: Peer URLs already exists" \
  "$(ctl --endpoints="$ALL" member add dup --peer-urls="http://127.0.0.1:${PEER[0]}" || true)"
start_member 3 existing "$CLUSTER,c4=http://127.0.0.1:${PEER[3]}"
JOINED=""
for _ in $(seq 1 100); do
  if [ "$(ctl --endpoints="$(ep 3)" get after-kill --consistency=s --print-value-only)" == "yes" ]; then JOINED=yes; break; fi
  sleep 0.1
done
check "added member joins and catches up" "yes" "$JOINED"
check_contains "member list shows the learner started" "c4, http://127.0.0.1:${PEER[3]}, http://127.0.0.1:${CLIENT[3]}, true" \
  "$(ctl --endpoints="$ALL" member list)"
PROMOTED=""
for _ in $(seq 1 50); do
  if ctl --endpoints="$ALL" member promote "$NEW_ID" | grep -q "promoted"; then PROMOTED=yes; break; fi
  sleep 0.2
done
check "member promote" "yes" "$PROMOTED"
check "four voters" "4" "$(ctl --endpoints="$ALL" member list | grep -c ', false$')"
check_contains "member remove" "removed from cluster" "$(ctl --endpoints="$ALL" member remove "$NEW_ID")"
STOPPED=""
for _ in $(seq 1 100); do
  if ! kill -0 "${PIDS[3]}" 2>/dev/null; then STOPPED=yes; break; fi
  sleep 0.1
done
check "a removed member stops by itself" "yes" "$STOPPED"
check "member list after remove" "3" "$(ctl --endpoints="$ALL" member list | grep -c 'started')"
check "the cluster still writes" "OK" "$(ctl --endpoints="$ALL" put after-remove yes)"

# --- client TLS: certificates from `mainstay certs`, one member over https ---
CERTS="$WORK/certs"
check_contains "mainstay certs" "wrote $CERTS/client-root.pem" \
  "$("$BIN" certs --dir "$CERTS" --member t1=127.0.0.1,localhost --client root 2>&1)"
NAMES[4]=t1
CLIENT[4]=$((BASE + 40))
PEER[4]=$((BASE + 41))
TLS_EP="https://127.0.0.1:${CLIENT[4]}"
"$BIN" serve --name t1 --data-dir "$WORK/t1" \
  --listen-client-urls "$TLS_EP" --advertise-client-urls "$TLS_EP" \
  --listen-peer-urls "http://127.0.0.1:${PEER[4]}" \
  --initial-advertise-peer-urls "http://127.0.0.1:${PEER[4]}" \
  --initial-cluster "t1=http://127.0.0.1:${PEER[4]}" \
  --cert-file "$CERTS/t1.pem" --key-file "$CERTS/t1-key.pem" \
  --trusted-ca-file "$CERTS/ca.pem" --client-cert-auth >>"$WORK/t1.log" 2>&1 &
PIDS[4]=$!
TLS_CTL=(--endpoints="$TLS_EP" --cacert="$CERTS/ca.pem" --cert="$CERTS/client-root.pem" --key="$CERTS/client-root-key.pem")
TLS_PUT=""
for _ in $(seq 1 100); do
  if [ "$(ctl "${TLS_CTL[@]}" put tls yes)" == "OK" ]; then TLS_PUT=yes; break; fi
  sleep 0.1
done
check "put over TLS with a client certificate" "yes" "$TLS_PUT"
check "get over TLS" "yes" "$(ctl "${TLS_CTL[@]}" get tls --print-value-only)"
check_contains "endpoint status over TLS" "$TLS_EP" "$(ctl "${TLS_CTL[@]}" endpoint status)"
check "no client certificate is refused" "refused" \
  "$(ctl --endpoints="$TLS_EP" --cacert="$CERTS/ca.pem" get tls >/dev/null && echo served || echo refused)"
check "plain text to the TLS port is refused" "refused" \
  "$(ctl --endpoints="http://127.0.0.1:${CLIENT[4]}" get tls >/dev/null && echo served || echo refused)"
check_contains "the refusal is logged with the reason" "TLS handshake failed" "$(cat "$WORK/t1.log")"
# openssl as a client that offers one old or current protocol version
# (SECLEVEL=0 lets it offer TLS 1.1 at all): the member ends a TLS 1.1
# handshake with an alert (no cipher agreed) and completes TLS 1.2 and 1.3.
ossl() {
  openssl s_client -connect "127.0.0.1:${CLIENT[4]}" -CAfile "$CERTS/ca.pem" \
    -cert "$CERTS/client-root.pem" -key "$CERTS/client-root-key.pem" "$@" </dev/null 2>&1 || true
}
check_contains "TLS 1.1 is refused" "Cipher is (NONE)" \
  "$(ossl -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0')"
check_contains "TLS 1.2 is served" "New, TLSv1.2, Cipher is ECDHE" "$(ossl -tls1_2)"
check_contains "TLS 1.3 is served" "New, TLSv1.3, Cipher is TLS_" "$(ossl -tls1_3)"

# --- auth on the TLS member: the client certificate's name is the user ------
check "user add over TLS" "User root created" "$(ctl "${TLS_CTL[@]}" user add root:rootpw)"
check "grant root over TLS" "Role root is granted to user root" "$(ctl "${TLS_CTL[@]}" user grant-role root root)"
check "auth enable over TLS" "Authentication Enabled" "$(ctl "${TLS_CTL[@]}" auth enable)"
check "the certificate named root writes without a password" "OK" "$(ctl "${TLS_CTL[@]}" put tls-auth yes)"
check "and administers" "root" "$(ctl "${TLS_CTL[@]}" user list)"

# --- auth: users, roles, key-range permissions, tokens ----------------------
AUTH_LEADER="$(ep "$(leader_position)")"
check "user add" "User root created" "$(ctl --endpoints="$ALL" user add root:rootpw)"
check "user grant-role" "Role root is granted to user root" "$(ctl --endpoints="$ALL" user grant-role root root)"
check "role add" "Role app created" "$(ctl --endpoints="$ALL" role add app)"
check "role grant-permission --prefix" "Role app updated" \
  "$(ctl --endpoints="$ALL" role grant-permission app readwrite --prefix app/)"
check "user add alice" "User alice created" "$(ctl --endpoints="$ALL" user add alice:alicepw)"
check "grant alice app" "Role app is granted to user alice" "$(ctl --endpoints="$ALL" user grant-role alice app)"
check "auth enable" "Authentication Enabled" "$(ctl --endpoints="$AUTH_LEADER" auth enable)"
check_contains "no user is refused" "etcdserver: user name is empty" "$(ctl --endpoints="$ALL" get app/x || true)"
check "alice writes her prefix through a follower" "OK" \
  "$(ctl --endpoints="$(ep "$FOLLOWER")" --user alice:alicepw put app/x 1)"
check "alice reads it" "1" "$(ctl --endpoints="$ALL" --user alice:alicepw get app/x --print-value-only)"
check_contains "alice outside her prefix" "etcdserver: permission denied" \
  "$(ctl --endpoints="$ALL" --user alice:alicepw put other 1 || true)"
check_contains "alice's get of a range wider than hers" "etcdserver: permission denied" \
  "$(ctl --endpoints="$ALL" --user alice:alicepw get app --from-key || true)"
check_contains "a wrong password" "etcdserver: authentication failed, invalid user ID or password" \
  "$(ctl --endpoints="$ALL" --user alice:nope get app/x || true)"
check_contains "alice may not list users" "etcdserver: permission denied" \
  "$(ctl --endpoints="$ALL" --user alice:alicepw user list || true)"
check "root lists users" "$(printf 'alice\nroot')" "$(ctl --endpoints="$ALL" --user root:rootpw user list)"
check_contains "role get" "[app/, app0) (prefix app/)" "$(ctl --endpoints="$ALL" --user root:rootpw role get app)"
check_contains "user get --detail" "Role app" "$(ctl --endpoints="$ALL" --user alice:alicepw user get alice --detail)"
check "endpoint health for a user without the health key" "3" \
  "$(ctl --endpoints="$ALL" --user alice:alicepw endpoint health | grep -c 'is healthy')"
check_contains "auth disable needs root" "etcdserver: permission denied" \
  "$(ctl --endpoints="$ALL" --user alice:alicepw auth disable || true)"
check "auth disable" "Authentication Disabled" "$(ctl --endpoints="$ALL" --user root:rootpw auth disable)"
check "no user needed again" "1" "$(ctl --endpoints="$ALL" get app/x --print-value-only)"

# --- snapshot: saved from Mainstay, read by etcdctl, restored into etcd -------
SNAP_REV=$(ctl --endpoints="$ALL" put snap/last v -w fields | sed -n 's/^"Revision" : //p')
SNAP_LEASE=$(ctl --endpoints="$ALL" lease grant 600 | sed -n 's/^lease \([0-9a-f]*\) granted.*/\1/p')
ctl --endpoints="$ALL" put --lease="$SNAP_LEASE" snap/leased v >/dev/null
SNAP_REV=$((SNAP_REV + 1))
SNAP_FROM=$((($(leader_position) + 1) % 3))
check_contains "snapshot save from a follower" "Snapshot saved at $WORK/s.db" \
  "$(ctl --endpoints="$(ep "$SNAP_FROM")" snapshot save "$WORK/s.db")"
STATUS=$(ctl -w json snapshot status "$WORK/s.db")
check "snapshot status reads the revision" "$SNAP_REV" \
  "$(echo "$STATUS" | sed -n 's/.*"revision":\([0-9]*\).*/\1/p')"
cp "$WORK/s.db" "$WORK/damaged.db"
printf 'garbage' | dd of="$WORK/damaged.db" bs=1 seek=5000 conv=notrunc 2>/dev/null
check_contains "snapshot restore refuses a damaged file" "expected sha256" \
  "$(ctl snapshot restore "$WORK/damaged.db" --data-dir "$WORK/never" || true)"
E_CLIENT=$((BASE + 70))
E_PEER=$((BASE + 71))
check_contains "snapshot restore (etcdctl)" "restored snapshot" \
  "$(ctl snapshot restore "$WORK/s.db" --name e1 --data-dir "$WORK/e1" \
    --initial-cluster "e1=http://127.0.0.1:$E_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$E_PEER")"
etcd --name e1 --data-dir "$WORK/e1" \
  --listen-client-urls "http://127.0.0.1:$E_CLIENT" --advertise-client-urls "http://127.0.0.1:$E_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$E_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$E_PEER" \
  --initial-cluster "e1=http://127.0.0.1:$E_PEER" >>"$WORK/e1.log" 2>&1 &
PIDS[6]=$!
E_EP="http://127.0.0.1:$E_CLIENT"
wait_healthy "$E_EP"
check "etcd serves the restored keys" "$(ctl --endpoints="$ALL" get "" --prefix --keys-only | grep -c .)" \
  "$(ctl --endpoints="$E_EP" get "" --prefix --keys-only | grep -c .)"
check "etcd serves the restored revision" "$SNAP_REV" \
  "$(ctl --endpoints="$E_EP" get snap/last -w fields | sed -n 's/^"Revision" : //p')"
check_contains "etcd holds the restored lease" "$SNAP_LEASE" "$(ctl --endpoints="$E_EP" lease list)"
check_contains "the lease keeps its key in etcd" "attached keys([snap/leased])" \
  "$(ctl --endpoints="$E_EP" lease timetolive "$SNAP_LEASE" --keys)"
# And back: etcd's own snapshot restored into a Mainstay member (migration).
ctl --endpoints="$E_EP" put from-etcd yes >/dev/null
check_contains "snapshot save from etcd" "Snapshot saved at $WORK/etcd.db" \
  "$(ctl --endpoints="$E_EP" snapshot save "$WORK/etcd.db")"
E_KEYS=$(ctl --endpoints="$E_EP" get "" --prefix --keys-only | grep -c .)
E_REV=$(ctl --endpoints="$E_EP" get from-etcd -w fields | sed -n 's/^"Revision" : //p')
kill "${PIDS[6]}" 2>/dev/null || true
check "mainstay snapshot status prints what etcdctl prints" "$(ctl snapshot status "$WORK/etcd.db" -w table)" \
  "$("$BIN" snapshot status "$WORK/etcd.db" -w table 2>&1)"
M_CLIENT=$((BASE + 80))
M_PEER=$((BASE + 81))
check_contains "mainstay snapshot restore of etcd's file" "restored snapshot" \
  "$("$BIN" snapshot restore "$WORK/etcd.db" --name m1 --data-dir "$WORK/m1" \
    --initial-cluster "m1=http://127.0.0.1:$M_PEER" 2>&1)"
"$BIN" serve --name m1 --data-dir "$WORK/m1" \
  --listen-client-urls "http://127.0.0.1:$M_CLIENT" --advertise-client-urls "http://127.0.0.1:$M_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$M_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$M_PEER" \
  --initial-cluster "m1=http://127.0.0.1:$M_PEER" >>"$WORK/m1.log" 2>&1 &
PIDS[7]=$!
M_EP="http://127.0.0.1:$M_CLIENT"
wait_healthy "$M_EP"
check "Mainstay serves the keys migrated from etcd" "$E_KEYS" \
  "$(ctl --endpoints="$M_EP" get "" --prefix --keys-only | grep -c .)"
check "and etcd's revision" "$E_REV" \
  "$(ctl --endpoints="$M_EP" get from-etcd -w fields | sed -n 's/^"Revision" : //p')"
check_contains "and etcd's lease" "attached keys([snap/leased])" \
  "$(ctl --endpoints="$M_EP" lease timetolive "$SNAP_LEASE" --keys)"
check "and writes at the next revision" "$((E_REV + 1))" \
  "$(ctl --endpoints="$M_EP" put after-migration v -w fields | sed -n 's/^"Revision" : //p')"
kill "${PIDS[7]}" 2>/dev/null || true

# --- NOSPACE: a member over its quota refuses writes, serves reads ----------
NAMES[5]=q1
CLIENT[5]=$((BASE + 50))
PEER[5]=$((BASE + 51))
Q_EP="http://127.0.0.1:${CLIENT[5]}"
"$BIN" serve --name q1 --data-dir "$WORK/q1" \
  --listen-client-urls "$Q_EP" --advertise-client-urls "$Q_EP" \
  --listen-peer-urls "http://127.0.0.1:${PEER[5]}" \
  --initial-advertise-peer-urls "http://127.0.0.1:${PEER[5]}" \
  --initial-cluster "q1=http://127.0.0.1:${PEER[5]}" \
  --quota-backend-bytes $((4 * 1024 * 1024)) >>"$WORK/q1.log" 2>&1 &
PIDS[5]=$!
wait_healthy "$Q_EP"
BIG=$(head -c 65536 /dev/zero | tr '\0' x)
check "put a key to delete last" "OK" "$(ctl --endpoints="$Q_EP" put guard v)"
FULL=""
for n in $(seq 1 400); do
  OUT=$(ctl --endpoints="$Q_EP" put "big$n" "$BIG" || true)
  if [ "$OUT" != "OK" ]; then FULL=$OUT; break; fi
done
check_contains "writes past the quota are refused" "etcdserver: mvcc: database space exceeded" "$FULL"
check_contains "alarm list names NOSPACE" "alarm:NOSPACE" "$(ctl --endpoints="$Q_EP" alarm list)"
check_contains "endpoint status shows the alarm" "alarm:NOSPACE" "$(ctl --endpoints="$Q_EP" endpoint status)"
check "reads are still served" "1" "$(ctl --endpoints="$Q_EP" get big1 --keys-only | grep -c big1)"
check_contains "a txn that writes is refused" "etcdserver: mvcc: database space exceeded" \
  "$(printf '\n\nput big1 y\n\n' | ctl --endpoints="$Q_EP" txn || true)"
check "deletes are still served" "1" "$(ctl --endpoints="$Q_EP" del big1)"
# etcd's runbook: delete, compact past the deletes, defragment, disarm.
ctl --endpoints="$Q_EP" del big --prefix >/dev/null
check "delete the last key" "1" "$(ctl --endpoints="$Q_EP" del guard)"
Q_REV=$(ctl --endpoints="$Q_EP" endpoint status -w fields | sed -n 's/^"Revision" : //p')
check "compaction under NOSPACE" "compacted revision $Q_REV" "$(ctl --endpoints="$Q_EP" compaction "$Q_REV")"
Q_BEFORE=$(ctl --endpoints="$Q_EP" endpoint status -w fields | sed -n 's/^"DBSize" : //p')
# dbSizeInUse says beforehand about what the defragmentation will leave,
# once the compaction is in the state file: applied changes are committed
# on the first apply 100 ms after the last commit (etcd's batch interval),
# so a delete of nothing, applied after that, brings it in.
sleep 0.2
ctl --endpoints="$Q_EP" del no-such-key >/dev/null
Q_IN_USE=$(ctl --endpoints="$Q_EP" endpoint status -w json | sed -n 's/.*"dbSizeInUse":\([0-9]*\).*/\1/p')
check "dbSizeInUse after the compaction is under a tenth of dbSize" "yes" \
  "$([ -n "$Q_IN_USE" ] && [ $((Q_IN_USE * 10)) -lt "$Q_BEFORE" ] && echo yes || echo "in use $Q_IN_USE of $Q_BEFORE")"
check "defrag" "Finished defragmenting etcd member[$Q_EP]" "$(ctl --endpoints="$Q_EP" defrag)"
Q_AFTER=$(ctl --endpoints="$Q_EP" endpoint status -w fields | sed -n 's/^"DBSize" : //p')
check "defrag shrinks the state file to a tenth" "yes" \
  "$([ $((Q_AFTER * 10)) -lt "$Q_BEFORE" ] && echo yes || echo "$Q_BEFORE -> $Q_AFTER")"
check "the defragmented file is within a quarter of the dbSizeInUse before it" "yes" \
  "$([ $((Q_AFTER * 4)) -le $((Q_IN_USE * 5)) ] && [ $((Q_AFTER * 4)) -ge $((Q_IN_USE * 3)) ] && echo yes || echo "in use $Q_IN_USE, after $Q_AFTER")"
check_contains "alarm disarm" "alarm:NOSPACE" "$(ctl --endpoints="$Q_EP" alarm disarm)"
check "no alarm after disarm" "" "$(ctl --endpoints="$Q_EP" alarm list)"
check "writes again once the space is freed" "OK" "$(ctl --endpoints="$Q_EP" put big1 "$BIG")"
check "defrag --cluster on the 3-member cluster" "3" \
  "$(ctl --endpoints="$ALL" defrag --cluster | grep -c '^Finished defragmenting etcd member')"
check "reads after defrag" "$(printf 'k1\nv1b')" "$(ctl --endpoints="$ALL" get k1)"

# --- quorum loss: two of three members gone with their disks ---------------
# etcd's runbook: restart the survivor with --force-new-cluster, then add the
# others back with `member add` and empty data directories.
F_CLUSTER=""
F_ALL=""
for j in 0 1 2; do
  i=$((8 + j))
  NAMES[$i]=f$((j + 1))
  CLIENT[$i]=$((BASE + 80 + j * 10))
  PEER[$i]=$((BASE + 81 + j * 10))
  F_CLUSTER+="${F_CLUSTER:+,}${NAMES[$i]}=http://127.0.0.1:${PEER[$i]}"
  F_ALL+="${F_ALL:+,}$(ep "$i")"
done
for i in 8 9 10; do start_member "$i" new "$F_CLUSTER"; done
wait_healthy "$F_ALL"
for n in $(seq 1 20); do ctl --endpoints="$F_ALL" put "fq/$n" "$n" >/dev/null; done
F_LEASE=$(ctl --endpoints="$F_ALL" lease grant 600 | awk '{print $2}')
ctl --endpoints="$F_ALL" put fq/leased yes --lease="$F_LEASE" >/dev/null
F_REV=$(ctl --endpoints="$F_ALL" put fq/last yes -w fields | sed -n 's/^"Revision" : //p')
for _ in $(seq 1 100); do
  if [ "$(ctl --endpoints="$(ep 8)" get fq/last --consistency=s --print-value-only)" == "yes" ]; then break; fi
  sleep 0.1
done
kill "${PIDS[8]}"
wait "${PIDS[8]}" 2>/dev/null || true
KILLED[8]=1
start_member 8 new "$F_CLUSTER" --force-new-cluster
F_EXITED=""
for _ in $(seq 1 100); do
  if ! kill -0 "${PIDS[8]}" 2>/dev/null; then F_EXITED=yes; break; fi
  sleep 0.1
done
check "--force-new-cluster refused while the others serve" "yes" "$F_EXITED"
check_contains "and the refusal says they still answer" "still answer" "$(grep 'force-new-cluster refused' "$WORK/f1.log")"
for i in 9 10; do
  KILLED[$i]=1
  kill -9 "${PIDS[$i]}"
  wait "${PIDS[$i]}" 2>/dev/null || true
  rm -rf "${WORK:?}/${NAMES[$i]}"
done
start_member 8 new "$F_CLUSTER" --force-new-cluster
KILLED[8]=""
wait_healthy "$(ep 8)"
check "forced: the survivor is the only member" "1" "$(ctl --endpoints="$(ep 8)" member list | grep -c started)"
check "with every write it had" "22" "$(ctl --endpoints="$(ep 8)" get fq/ --prefix --keys-only | sed '/^$/d' | wc -l)"
check "at the same revision" "$F_REV" "$(ctl --endpoints="$(ep 8)" endpoint status -w fields | sed -n 's/^"Revision" : //p')"
check_contains "and the lease" "attached keys([fq/leased])" "$(ctl --endpoints="$(ep 8)" lease timetolive "$F_LEASE" --keys)"
check "it writes alone" "OK" "$(ctl --endpoints="$(ep 8)" put fq/alone yes)"
F_NOW="f1=http://127.0.0.1:${PEER[8]}"
for j in 0 1; do
  i=$((11 + j))
  NAMES[$i]=f$((4 + j))
  CLIENT[$i]=$((BASE + 110 + j * 10))
  PEER[$i]=$((BASE + 111 + j * 10))
  check_contains "member add ${NAMES[$i]} to the forced cluster" "added to cluster" \
    "$(ctl --endpoints="$(ep 8)" member add "${NAMES[$i]}" --peer-urls="http://127.0.0.1:${PEER[$i]}")"
  F_NOW+=",${NAMES[$i]}=http://127.0.0.1:${PEER[$i]}"
  start_member "$i" existing "$F_NOW"
  F_JOINED=""
  for _ in $(seq 1 100); do
    if [ "$(ctl --endpoints="$(ep "$i")" get fq/alone --consistency=s --print-value-only)" == "yes" ]; then F_JOINED=yes; break; fi
    sleep 0.1
  done
  check "${NAMES[$i]} joins with an empty directory and catches up" "yes" "$F_JOINED"
done
F_ALL="$(ep 8),$(ep 11),$(ep 12)"
check "three members again" "3" "$(ctl --endpoints="$F_ALL" member list | grep -c started)"
check "the new members have every write" "23" \
  "$(ctl --endpoints="$(ep 12)" get fq/ --prefix --keys-only --consistency=s | sed '/^$/d' | wc -l)"
check "the cluster of three writes" "OK" "$(ctl --endpoints="$(ep 12)" put fq/whole yes)"

echo
echo "etcdctl: $PASSED passed, $FAILED failed"
[ "$FAILED" == 0 ]
