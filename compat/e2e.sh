#!/usr/bin/env bash
# Compatibility tier: etcd 3.4's own end-to-end suite (tests/e2e, shipped as
# source by Debian's golang-etcd-server-dev) run against Mainstay. The suite is
# compiled from the installed package at run time (nothing of etcd is kept in
# this repository); compat/e2e/etcd stands in for the etcd binary and Debian's
# etcdctl (etcd-client) is the client.
#
# Usage: compat/e2e.sh [--all | --run REGEX] [--bin PATH] [--against-etcd]
#                      [--timeout DURATION] [--budget SECONDS] [--log FILE]
#   (default)       the tests in compat/e2e-pass.txt (the CI subset)
#   --all           the whole suite, 243 tests (about 3 minutes against Mainstay,
#                   7 against etcd; see e2e-expected-failures.txt)
#   --run REGEX     the tests whose names match REGEX (Go regexp, as -test.run)
#   --bin PATH      the mainstay binary (default $MAINSTAY_BIN, else
#                   target/debug/mainstay, else target/release/mainstay)
#   --against-etcd  run the same tests against Debian's etcd (package etcd-server)
#                   instead, as a baseline for the suite itself (3.4.23: all pass
#                   but TestEtcdExampleConfig, whose sample config Debian does not
#                   ship, and TestCtlV3Migrate, which needs TestCtlV2Set to have
#                   run first in the same process; two upgrade tests skip)
#   --timeout D     -test.timeout of each test (default 90s; etcd itself needs
#                   at most 15 s for any of them, but a member that never gets
#                   ready makes the suite wait until this timeout)
#   --budget S      stop starting tests after S seconds; the ones not run count
#                   as failed (default 420 for the e2e-pass.txt run, none else)
#   --log FILE      where to keep the suite's whole verbose output (default: a
#                   new file in ${TMPDIR:-/tmp}, named at the start and the end)
#
# Environment: MAINSTAY_BIN (as --bin); CI=true (see below); E2E_KEEP=1 keeps
# the work directory; E2E_STRICT_TLS=1 makes the adapter refuse --peer-auto-tls
# too (see compat/e2e/etcd).
#
# Each test runs in its own invocation of the suite binary, and whatever it
# leaves running is killed before the next.
#
# Prints one line per test (PASS, FAIL, SKIP, with the reason from
# e2e-expected-failures.txt where there is one), the messages of failing
# e2e-pass.txt tests,
# and closes with the line "N passed, M failed". Exits non-zero when a test of
# e2e-pass.txt fails or is skipped (in any mode), or when something needed is
# missing. Missing Debian packages are installed with apt-get when possible;
# under CI=true a tool still missing afterwards is a failure, never a skip.
#
# The suite uses fixed ports (20000-20030, 10000-10001 and the defaults 2379-2380):
# run one at a time.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPAT=$ROOT/compat
PASS_LIST=$COMPAT/e2e-pass.txt
EXPECTED=$COMPAT/e2e-expected-failures.txt
ETCD_SRC=/usr/share/gocode/src/go.etcd.io/etcd

mode=pass-list
regex=""
bin=${MAINSTAY_BIN:-}
against_etcd=false
timeout=90s
budget=""
log=""
while [ $# -gt 0 ]; do
  case $1 in
    --all) mode=all ;;
    --run) mode=run; regex=${2:?--run needs a regular expression}; shift ;;
    --bin) bin=${2:?--bin needs a path}; shift ;;
    --against-etcd) against_etcd=true ;;
    --timeout) timeout=${2:?--timeout needs a duration}; shift ;;
    --budget) budget=${2:?--budget needs a number of seconds}; shift ;;
    --log) log=${2:?--log needs a file}; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$budget" ] || [ $mode != pass-list ] || budget=420

fail() { echo "e2e.sh: $*" >&2; exit 1; }

# --- tools -------------------------------------------------------------------
missing_packages() {
  command -v go >/dev/null 2>&1 || echo golang-go
  [ -f "$ETCD_SRC/tests/e2e/etcd_process.go" ] || echo golang-etcd-server-dev
  command -v etcdctl >/dev/null 2>&1 || echo etcd-client
  command -v curl >/dev/null 2>&1 || echo curl # the suite's v2/v3 HTTP tests
  command -v ss >/dev/null 2>&1 || echo iproute2 # the adapter, for members on port 0
  if $against_etcd; then [ -x /usr/bin/etcd ] || echo etcd-server; fi
}
need=$(missing_packages | tr '\n' ' ')
if [ -n "${need// /}" ]; then
  echo "e2e.sh: installing $need"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  $sudo apt-get install -y --no-install-recommends $need ||
    { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends $need; } ||
    true
  need=$(missing_packages | tr '\n' ' ')
  if [ -n "${need// /}" ]; then
    if [ "${CI:-}" = true ]; then
      fail "still missing after apt-get: $need"
    fi
    fail "missing Debian packages: $need (install them; the tier cannot run without them)"
  fi
fi

if $against_etcd; then
  server=/usr/bin/etcd
else
  if [ -z "$bin" ]; then
    for candidate in "$ROOT/target/debug/mainstay" "$ROOT/target/release/mainstay"; do
      [ -x "$candidate" ] && { bin=$candidate; break; }
    done
  fi
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    fail "no mainstay binary (build it, or pass --bin / set MAINSTAY_BIN)"
  fi
  bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
  export MAINSTAY_BIN=$bin
  server=$COMPAT/e2e/etcd
fi

# --- build the suite ----------------------------------------------------------
WORK=$(mktemp -d -t mainstay-e2e.XXXXXX)
export E2E_RUN_MARK=$WORK # inherited by every process the suite starts
kill_leftovers() {
  # Members a failed or timed-out test left running: only processes started
  # from this run (they carry E2E_RUN_MARK in their environment), by pid.
  local env_file pid
  for env_file in /proc/[0-9]*/environ; do
    pid=${env_file#/proc/}
    pid=${pid%/environ}
    [ "$pid" = $$ ] && continue
    if tr '\0' '\n' 2>/dev/null <"$env_file" | grep -xF "E2E_RUN_MARK=$WORK" >/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  kill_leftovers
  [ -n "${E2E_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# Built from a copy in a private GOPATH (the package's folder may be read-only);
# everything else it imports comes from Debian's GOPATH.
build_pkg=$WORK/gopath/src/go.etcd.io/etcd/tests/e2e
mkdir -p "$build_pkg"
cp "$ETCD_SRC"/tests/e2e/*.go "$build_pkg/"
[ -w "${GOCACHE:-${HOME:-/nonexistent}/.cache}" ] || [ -w "${HOME:-/nonexistent}" ] || export GOCACHE=$WORK/gocache
echo "e2e.sh: building etcd's e2e suite from $ETCD_SRC/tests/e2e"
build_start=$SECONDS
(cd "$build_pkg" && GO111MODULE=off GOPATH=$WORK/gopath:/usr/share/gocode GOFLAGS='' \
  go test -c -o "$WORK/e2e.test" .) || fail "could not build the e2e suite"
echo "e2e.sh: built in $((SECONDS - build_start)) s"

# The suite resolves ../../integration/fixtures (certificates, JWT keys) and
# ../../etcd.conf.yml.sample from its working directory.
run_dir=$WORK/run/tests/e2e
mkdir -p "$run_dir" "$WORK/run/integration" "$WORK/tmp"
ln -s "$ETCD_SRC/integration/fixtures" "$WORK/run/integration/fixtures"
[ -f "$ETCD_SRC/etcd.conf.yml.sample" ] && ln -s "$ETCD_SRC/etcd.conf.yml.sample" "$WORK/run/etcd.conf.yml.sample"

bindir=$WORK/bin
mkdir -p "$bindir"
ln -s "$server" "$bindir/etcd"
ln -s "$(command -v etcdctl)" "$bindir/etcdctl"

# --- choose the tests ---------------------------------------------------------
list_file() { sed -e 's/#.*//' -e 's/[[:space:]]//g' "$1" | grep -v '^$'; }
declare -A in_pass=() reason=()
if [ -f "$PASS_LIST" ]; then
  while read -r t; do in_pass[$t]=1; done < <(list_file "$PASS_LIST")
fi
if [ -f "$EXPECTED" ]; then
  while IFS= read -r line; do
    t=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' <<<"$line")
    [ -n "$t" ] || continue
    r=$(sed -n 's/^[^#]*#[[:space:]]*//p' <<<"$line")
    reason[$t]=${r:-expected failure}
  done <"$EXPECTED"
fi
case $mode in
  pass-list)
    [ -f "$PASS_LIST" ] || fail "no $PASS_LIST"
    mapfile -t tests < <(list_file "$PASS_LIST")
    [ ${#tests[@]} -gt 0 ] || fail "$PASS_LIST lists no tests"
    regex="^($(IFS='|'; echo "${tests[*]}"))\$"
    ;;
  all) regex='.*' ;;
esac
mapfile -t tests < <("$WORK/e2e.test" -test.list "$regex")
[ ${#tests[@]} -gt 0 ] || fail "no test of the suite matches $regex"
if [ $mode = pass-list ]; then
  # (A lookup table, not `printf | grep -q`: under pipefail grep's early exit
  # can kill printf with SIGPIPE and fail a name that is there.)
  declare -A in_suite=()
  for t in "${tests[@]}"; do in_suite[$t]=1; done
  for t in $(list_file "$PASS_LIST"); do
    [ -n "${in_suite[$t]:-}" ] || fail "$PASS_LIST names $t, which the suite does not have"
  done
fi

busy=$(ss -Hltn 2>/dev/null | awk '{ n = split($4, a, ":"); p = a[n] } p >= 20000 && p < 20100 { print p }' | tr '\n' ' ')
[ -z "$busy" ] || echo "e2e.sh: WARNING: ports the suite uses are taken ($busy): another run or a leftover member may break tests"

# --- run ----------------------------------------------------------------------
# One invocation of the suite per test: a test that fails half-way often returns
# without stopping its members (TestCtlV2Backup does), and they would hold the
# fixed ports for every test after it. Between tests, whatever the last one left
# running is killed.
[ -n "$log" ] || log=$(mktemp -t mainstay-e2e-log.XXXXXX) || fail "cannot create a log file"
: >"$log" || fail "cannot write $log"
echo "e2e.sh: running ${#tests[@]} test(s) against $server${MAINSTAY_BIN:+ (MAINSTAY_BIN=$MAINSTAY_BIN)}"
echo "e2e.sh: -test.timeout $timeout per test${budget:+, $budget s in all}; log $log"
run_start=$SECONDS
declare -A result=()
for t in "${tests[@]}"; do
  if [ -n "$budget" ] && [ $((SECONDS - run_start)) -ge "$budget" ]; then
    result[$t]="not run: the $budget s budget is spent"
    continue
  fi
  echo "=== e2e.sh: $t" >>"$log"
  # EXPECT_DEBUG makes the suite echo every line of every etcd and etcdctl it
  # runs into the log: that is where the failure causes are read from.
  # TMPDIR: the members' data directories (which a failed test leaves behind)
  # and snapshot files go into $WORK, removed at the end.
  (cd "$run_dir" && TMPDIR=$WORK/tmp EXPECT_DEBUG=1 exec "$WORK/e2e.test" -test.v -test.timeout "$timeout" \
    -test.run "^$t\$" -bin-dir "$bindir" -cert-dir "$WORK/run/integration/fixtures") >>"$log" 2>&1
  code=$?
  kill_leftovers
  # Not anchored, and -a: a process's last line without a newline (etcdctl's
  # protobuf output, curl's) runs into the suite's own result line.
  line=$(sed -n '/^=== e2e.sh: '"$t"'$/,$p' "$log" | grep -aoE -- "--- (PASS|FAIL|SKIP): $t \([0-9.]+s\)" | tail -n 1)
  [ -n "$line" ] || line="--- FAIL: $t (no result: exit $code, see the log)"
  result[$t]=$line
  echo "$line"
done
elapsed=$((SECONDS - run_start))

# --- summary ------------------------------------------------------------------
echo
echo "=== summary (${#tests[@]} tests in $((elapsed / 60))m$((elapsed % 60))s)"
passed=0 failed=0 skipped=0 bad=()
for t in "${tests[@]}"; do
  r=${result[$t]}
  case $r in
    "--- PASS"*) s=PASS ;;
    "--- SKIP"*) s=SKIP ;;
    *) s=FAIL ;;
  esac
  d=$(sed -n 's/.*(\([0-9.]*s\))$/\1/p' <<<"$r")
  [ -n "$d" ] || d="($r)"
  note=""
  if [ -n "${in_pass[$t]:-}" ]; then
    [ $s = PASS ] || { note="  <-- in e2e-pass.txt"; bad+=("$t"); }
  elif [ -n "${reason[$t]:-}" ]; then
    if [ $s = PASS ]; then note="  (in e2e-expected-failures.txt: ${reason[$t]})"; else note="  # ${reason[$t]}"; fi
  else
    note="  (in neither list)"
  fi
  printf '%-4s %-55s %7s%s\n' "$s" "$t" "$d" "$note"
  case $s in PASS) passed=$((passed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; *) failed=$((failed + 1)) ;; esac
done

if [ ${#bad[@]} -gt 0 ]; then
  echo
  echo "=== failures of e2e-pass.txt tests (the test's messages and the members' fatal errors; all in $log)"
  for t in "${bad[@]}"; do
    echo "--- $t"
    LC_ALL=C awk -v t="$t" '
      $0 == "=== e2e.sh: " t { on = 1; next }
      on && /^=== e2e.sh: / { exit }
      on && (/^[[:space:]]+[A-Za-z0-9_]+\.go:[0-9]+:/ || /\(mainstay adapter\): / || /\/etcd-[0-9]+: error: /) {
        print; if (++n >= 15) exit
      }
    ' "$log"
  done
fi

echo
echo "e2e.sh: log $log"
if [ -n "${E2E_KEEP:-}" ]; then echo "e2e.sh: kept $WORK"; fi
[ $skipped = 0 ] || echo "$skipped skipped (counted in neither number)"
echo "$passed passed, $failed failed"
[ ${#bad[@]} = 0 ] || exit 1
exit 0
