#!/usr/bin/env bash
# Sigil beside Ory Hydra and Keycloak, in one run, with one load generator.
#
#   bench/peers/run.sh            # everything: builds/fetches, measures, table + plot
#
# What it does (README "Benchmarks", BENCHMARKS.md):
#  - builds Ory Hydra from the Go module proxy with the pinned tool module
#    bench/peers/hydra (go.mod + go.sum, -mod=readonly), fetches Keycloak's
#    Quarkus distribution from Maven Central (sha256 checked below) and builds
#    the release standalone issuer (cargo build --release -p sigil-issuer);
#    binaries and the unpacked distribution live in ~/.cache/sigil/peers;
#  - starts each server pinned to one core (taskset -c $SERVER_CPU), time from
#    process start to the first 200 from its token endpoint, warms it in
#    rounds until its rate gains < $WARM_GAIN_PCT %, then drives it with wrk
#    (Debian; pinned to $LOAD_CPU) and bench/peers/token.lua, which checks
#    every response for status 200 and "access_token" in the body; all with
#    client_secret_basic, keep-alive, $CONNECTIONS connections;
#  - server CPU seconds from /proc/<pid>/stat (utime + stime) around the
#    measurement, RSS from /proc/<pid>/status after it;
#  - a concurrency sweep ($SWEEP) per server, plotted with gnuplot;
#  - Sigil's floor from `sigil-bench` (DESIGN §9) in the same run.
#
# Prints the side-by-side table; writes results.md, sweep.tsv and
# throughput-p99.png to $OUT (default bench/peers/results). Exits non-zero
# if any checked response failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PEERS=$ROOT/bench/peers
CACHE=${SIGIL_PEERS_CACHE:-$HOME/.cache/sigil/peers}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$PEERS/results}

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CONNECTIONS=${CONNECTIONS:-16}
MEASURE_SECONDS=${MEASURE_SECONDS:-10}
SWEEP=${SWEEP:-1 4 16 64}
SWEEP_SECONDS=${SWEEP_SECONDS:-5}
WARM_ROUND_SECONDS=${WARM_ROUND_SECONDS:-10}
WARM_GAIN_PCT=${WARM_GAIN_PCT:-5}
WARM_CAP_SECONDS=${WARM_CAP_SECONDS:-60}
KEYCLOAK_WARM_CAP_SECONDS=${KEYCLOAK_WARM_CAP_SECONDS:-300}
KEYCLOAK_WARM_MIN_SECONDS=${KEYCLOAK_WARM_MIN_SECONDS:-120}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-300}
# Which servers; hydra = default client-secret hashing, hydra-pbkdf2-1 = the
# cheapest its config allows (pbkdf2 at 1 iteration).
SERVERS=${SERVERS:-floor sigil hydra hydra-pbkdf2-1 keycloak}
# Scheduling priority (nice) of the servers and wrk, e.g. -10 on a machine
# busy with other work; 0 leaves it alone.
NICE=${NICE:-0}
# OAuthClients loaded into the standalone issuer besides the one the load
# uses (the scale figure: SIGIL_EXTRA_CLIENTS=99999 SERVERS=sigil).
SIGIL_EXTRA_CLIENTS=${SIGIL_EXTRA_CLIENTS:-0}
# FLOOR=0 skips sigil-bench.
FLOOR=${FLOOR:-1}

HYDRA_VERSION=v2.3.0
KEYCLOAK_VERSION=26.7.3
KEYCLOAK_SHA256=27a6535553c3cdcd083872ba40629efafb3475e3b758e0c6f691395561dd0f1f
KEYCLOAK_URL=https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/$KEYCLOAK_VERSION/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip

SIGIL_PORT=18443
FLOOR_PORT=18444
HYDRA_PUBLIC=14444
HYDRA_ADMIN=14445
KEYCLOAK_PORT=18180
SECRET=bench-secret-0123456789abcdef

log() { printf '[peers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for tool in wrk taskset curl unzip gnuplot python3 go java cargo; do
    command -v "$tool" >/dev/null || die "needs $tool (Debian: apt-get install wrk gnuplot-nox unzip curl)"
done
CLK_TCK=$(getconf CLK_TCK)
mkdir -p "$CACHE" "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sigil-peers.XXXXXX")
SERVER_PID=
cleanup() {
    stop_server
    rm -rf "$WORK" "${HYDRA_DB_DIR:-}"
}
trap cleanup EXIT

# ---------------------------------------------------------------- build

build_hydra() {
    HYDRA_BIN=$CACHE/hydra-$HYDRA_VERSION
    if [[ ! -x $HYDRA_BIN ]]; then
        log "building Ory Hydra $HYDRA_VERSION (Go module proxy, bench/peers/hydra)"
        (cd "$PEERS/hydra" && CGO_ENABLED=1 go build -mod=readonly \
            -tags sqlite,sqlite_omit_load_extension \
            -o "$HYDRA_BIN.tmp" github.com/ory/hydra/v2)
        mv "$HYDRA_BIN.tmp" "$HYDRA_BIN"
    fi
}

fetch_keycloak() {
    KEYCLOAK_HOME=$CACHE/keycloak-$KEYCLOAK_VERSION
    local zip=$CACHE/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip
    if [[ ! -x $KEYCLOAK_HOME/bin/kc.sh ]]; then
        if [[ ! -f $zip ]]; then
            log "fetching Keycloak $KEYCLOAK_VERSION from Maven Central"
            curl -sSf -o "$zip.part" "$KEYCLOAK_URL"
            mv "$zip.part" "$zip"
        fi
        echo "$KEYCLOAK_SHA256  $zip" | sha256sum -c --quiet - ||
            die "$zip: sha256 mismatch (delete it to fetch again)"
        rm -rf "$KEYCLOAK_HOME"
        unzip -q "$zip" -d "$CACHE"
    fi
}

build_sigil() {
    log "building the release issuer and sigil-bench (cargo, target $TARGET)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked -q -p sigil-issuer -p sigil-bench)
    SIGIL_BIN=$TARGET/release/issuer
    SIGIL_BENCH_BIN=$TARGET/release/sigil-bench
}

# ---------------------------------------------------------------- measuring

now() { date +%s.%N; }
# exec: run in the background, the server keeps the pid $! names.
pin_server() { exec nice -n "$NICE" taskset -c "$SERVER_CPU" "$@"; }
cpu_ticks() { # utime + stime of the whole process (all threads)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
rss_kib() { awk -v k="${2:-VmRSS}:" '$1 == k { print $2 }' "/proc/$1/status"; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# basic AUTH header value for id:secret
basic() { printf 'Basic %s' "$(printf '%s:%s' "$1" "$2" | base64 -w0)"; }

# One token request: prints the HTTP status; the body goes to $WORK/token.json.
token_once() { # url auth
    curl -s -o "$WORK/token.json" -w '%{http_code}' -H "Authorization: $2" \
        -d grant_type=client_credentials "$1" 2>/dev/null || echo 000
}

# Waits for the first 200 + access_token; prints seconds since $1.
wait_first_token() { # started url auth
    local deadline=$((SECONDS + STARTUP_TIMEOUT))
    while ((SECONDS < deadline)); do
        [[ -n $SERVER_PID ]] && ! kill -0 "$SERVER_PID" 2>/dev/null && die "server exited before its first token"
        if [[ $(token_once "$2" "$3") == 200 ]] && grep -q '"access_token"' "$WORK/token.json"; then
            python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"
            return
        fi
        sleep 0.02
    done
    die "no token from $2 within ${STARTUP_TIMEOUT}s"
}

token_alg() { # alg in the JOSE header of the last token
    python3 - "$WORK/token.json" <<'EOF'
import base64, json, sys
token = json.load(open(sys.argv[1]))["access_token"]
header = token.split(".")[0]
print(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["alg"])
EOF
}

# wrk for $4 seconds at $3 connections; prints "ok bad socket_errors rps p50 p99"
wrk_run() { # url auth connections seconds
    local out=$WORK/wrk.out
    BENCH_AUTH=$2 nice -n "$NICE" taskset -c "$LOAD_CPU" wrk -t1 -c"$3" -d"$4s" --timeout 10s \
        -s "$PEERS/token.lua" "$1" >"$out" 2>&1 || true
    grep -q '^RESULT' "$out" || {
        cat "$out" >&2
        die "wrk gave no result"
    }
    grep '^FIRST_BAD' "$out" >&2 || true
    sed -n 's/^RESULT ok=\([0-9]*\) bad=\([0-9]*\) socket_errors=\([0-9]*\) rps=\([0-9.]*\) p50_ms=\([0-9.]*\) p99_ms=\([0-9.]*\).*/\1 \2 \3 \4 \5 \6/p' "$out"
}

# Rounds of $WARM_ROUND_SECONDS until two rounds in a row gain < $WARM_GAIN_PCT %
# on the best before them (one slow round on a shared machine is not the end
# of a JVM's warm-up), at least $5 s and at most $4 s.
warm() { # name url auth cap_seconds min_seconds
    local started=$SECONDS best=0 flat=0 rounds=0 r rps
    while :; do
        r=$(wrk_run "$2" "$3" "$CONNECTIONS" "$WARM_ROUND_SECONDS")
        rps=$(cut -d' ' -f4 <<<"$r")
        rounds=$((rounds + 1))
        log "$1 warm-up round $rounds: $rps req/s"
        if python3 -c "import sys; b, r, g = map(float, sys.argv[1:]); sys.exit(0 if r >= b * (1 + g / 100) else 1)" \
            "$best" "$rps" "$WARM_GAIN_PCT"; then
            flat=0
        else
            flat=$((flat + 1))
        fi
        best=$(python3 -c "import sys; print(max(map(float, sys.argv[1:])))" "$best" "$rps")
        if ((flat >= 2 && SECONDS - started >= $5)); then
            break
        fi
        if ((SECONDS - started >= $4)); then
            log "$1: warm-up cap of $4 s reached"
            break
        fi
    done
    WARM_INFO="$rounds × ${WARM_ROUND_SECONDS} s"
}

ERRORS=0
# Warm, measure, sweep the running server ($SERVER_PID, $MEASURE_PID).
measure() { # name label url auth startup warm_cap [warm_min]
    local name=$1 label=$2 url=$3 auth=$4 startup=$5
    local alg=${ALG:-}
    [[ -n $alg ]] || alg=$(token_alg)
    log "$name: first token after $startup s, alg $alg"
    warm "$name" "$url" "$auth" "$6" "${7:-0}"
    local load_before cpu_before cpu_after r
    load_before=$(load1)
    cpu_before=$(cpu_ticks "$MEASURE_PID")
    r=$(wrk_run "$url" "$auth" "$CONNECTIONS" "$MEASURE_SECONDS")
    cpu_after=$(cpu_ticks "$MEASURE_PID")
    local rss hwm
    rss=$(rss_kib "$MEASURE_PID")
    hwm=$(rss_kib "$MEASURE_PID" VmHWM)
    read -r ok bad sock rps p50 p99 <<<"$r"
    ERRORS=$((ERRORS + bad + sock))
    log "$name: $rps req/s, p50 $p50 ms, p99 $p99 ms, bad $bad, socket errors $sock"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$name" "$label" "$alg" "$ok" "$bad" "$sock" "$rps" "$p50" "$p99" \
        "$(python3 -c "import sys; print((int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]))" "$cpu_before" "$cpu_after" "$CLK_TCK")" \
        "$rss" "$hwm" "$startup" "$WARM_INFO" "$load_before" >>"$OUT/results.tsv"
    local c
    for c in ${MEASURE_SWEEP-$SWEEP}; do
        r=$(wrk_run "$url" "$auth" "$c" "$SWEEP_SECONDS")
        read -r ok bad sock rps p50 p99 <<<"$r"
        ERRORS=$((ERRORS + bad + sock))
        log "$name sweep c=$c: $rps req/s, p99 $p99 ms"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$c" "$rps" "$p50" "$p99" "$bad" "$sock" >>"$OUT/sweep.tsv"
    done
}

stop_server() {
    if [[ -n ${SERVER_PID:-} ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        # kc.sh forwards the signal to its java child; wait for all to go.
        local _
        for _ in $(seq 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        if [[ -n ${MEASURE_PID:-} && $MEASURE_PID != "$SERVER_PID" ]]; then
            kill -9 "$MEASURE_PID" 2>/dev/null || true
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
        MEASURE_PID=
    fi
}

port_free() { # waits up to 30 s for nothing to listen on port $1
    local _
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# ---------------------------------------------------------------- servers

run_sigil() {
    port_free $SIGIL_PORT || die "port $SIGIL_PORT is taken"
    local dir=$WORK/sigil
    mkdir -p "$dir/manifests"
    cat >"$dir/manifests/bench.yaml" <<'EOF'
apiVersion: sigil.dev/v1alpha1
kind: OAuthClient
metadata: {name: bench, namespace: bench}
spec:
  scopes: [event.view, event.create, file.view]
  audiences: [event, file]
---
apiVersion: sigil.dev/v1alpha1
kind: SigningKey
metadata: {name: default, namespace: sigil-system}
spec: {algorithm: ES256}
EOF
    if ((SIGIL_EXTRA_CLIENTS > 0)); then
        awk -v n="$SIGIL_EXTRA_CLIENTS" 'BEGIN {
            for (i = 0; i < n; i++)
                printf "---\napiVersion: sigil.dev/v1alpha1\nkind: OAuthClient\nmetadata: {name: client-%d, namespace: scale}\nspec:\n  scopes: [event.view, event.create, file.view]\n  audiences: [event, file]\n", i
        }' >"$dir/manifests/extra.yaml"
    fi
    local url=http://127.0.0.1:$SIGIL_PORT/oauth2/token started
    started=$(now)
    pin_server "$SIGIL_BIN" --manifests "$dir/manifests" --secrets "$dir/secrets.json" \
        --listen 127.0.0.1:$SIGIL_PORT --issuer-url http://127.0.0.1:$SIGIL_PORT \
        --health-listen 127.0.0.1:0 --webhook-listen '' >"$dir/log" 2>&1 &
    SERVER_PID=$!
    MEASURE_PID=$SERVER_PID
    until [[ -s $dir/secrets.json ]]; do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            cat "$dir/log" >&2
            die "the issuer exited"
        }
        sleep 0.005
    done
    local secret auth
    secret=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['bench.bench'])" "$dir/secrets.json")
    auth=$(basic bench.bench "$secret")
    local startup
    startup=$(wait_first_token "$started" "$url" "$auth")
    local label="Sigil standalone (release)"
    ((SIGIL_EXTRA_CLIENTS == 0)) || label="$label, $((SIGIL_EXTRA_CLIENTS + 1)) clients loaded"
    measure sigil "$label" "$url" "$auth" "$startup" "$WARM_CAP_SECONDS"
    stop_server
}

run_hydra() { # name iterations-or-empty
    port_free $HYDRA_PUBLIC || die "port $HYDRA_PUBLIC is taken"
    port_free $HYDRA_ADMIN || die "port $HYDRA_ADMIN is taken"
    local dir=$WORK/$1 label
    mkdir -p "$dir"
    cp "$PEERS/hydra/hydra.yml" "$dir/hydra.yml"
    # SQLite in a file on tmpfs: `dsn: memory` (a shared-cache in-memory
    # database) lost the client under load here (every request 401
    # invalid_client after the first 10 s round).
    local db_dir=/dev/shm
    [[ -d $db_dir && -w $db_dir ]] || db_dir=$dir
    db_dir=$(mktemp -d "$db_dir/sigil-peers-hydra.XXXXXX")
    HYDRA_DB_DIR=$db_dir
    local dsn="sqlite://$db_dir/hydra.sqlite?_fk=true&_journal_mode=WAL"
    printf 'dsn: "%s"\n' "$dsn" >>"$dir/hydra.yml"
    "$HYDRA_BIN" migrate sql up --yes "$dsn" >"$dir/migrate.log" 2>&1 || {
        cat "$dir/migrate.log" >&2
        die "hydra: migrations failed"
    }
    if [[ -n $2 ]]; then
        printf 'oauth2:\n  hashers:\n    algorithm: pbkdf2\n    pbkdf2:\n      iterations: %s\n' "$2" >>"$dir/hydra.yml"
        label="Ory Hydra $HYDRA_VERSION, pbkdf2 at $2 iteration(s)"
    else
        label="Ory Hydra $HYDRA_VERSION, default hashing (pbkdf2, 25,000 iterations)"
    fi
    local admin=http://127.0.0.1:$HYDRA_ADMIN url=http://127.0.0.1:$HYDRA_PUBLIC/oauth2/token started
    started=$(now)
    pin_server "$HYDRA_BIN" serve all --dev --sqa-opt-out --config "$dir/hydra.yml" >"$dir/log" 2>&1 &
    SERVER_PID=$!
    MEASURE_PID=$SERVER_PID
    until curl -sf -o /dev/null "$admin/health/ready"; do
        kill -0 "$SERVER_PID" 2>/dev/null || {
            cat "$dir/log" >&2
            die "hydra exited"
        }
        sleep 0.02
    done
    # ES256 signing keys for JWT access tokens, before the first token (else
    # Hydra generates an RS256 set on first use).
    curl -s -o /dev/null -X DELETE "$admin/admin/keys/hydra.jwt.access-token" || true
    curl -sf -o /dev/null -H 'Content-Type: application/json' \
        -d '{"alg":"ES256","use":"sig","kid":"bench-es256"}' "$admin/admin/keys/hydra.jwt.access-token" ||
        die "hydra: creating the ES256 key set failed"
    curl -sf -o "$dir/client.json" -H 'Content-Type: application/json' \
        -d "{\"client_secret\":\"$SECRET\",\"grant_types\":[\"client_credentials\"],\"token_endpoint_auth_method\":\"client_secret_basic\",\"access_token_strategy\":\"jwt\"}" \
        "$admin/admin/clients" || die "hydra: creating the client failed"
    local id auth startup
    id=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['client_id'])" "$dir/client.json")
    auth=$(basic "$id" "$SECRET")
    startup=$(wait_first_token "$started" "$url" "$auth")
    measure "$1" "$label" "$url" "$auth" "$startup" "$WARM_CAP_SECONDS"
    stop_server
    rm -rf "$HYDRA_DB_DIR"
}

run_keycloak() {
    port_free $KEYCLOAK_PORT || die "port $KEYCLOAK_PORT is taken"
    # A fresh dev database each run: start-dev keeps H2 under data/.
    rm -rf "$KEYCLOAK_HOME/data"
    mkdir -p "$KEYCLOAK_HOME/data/import"
    cp "$PEERS/keycloak/realm.json" "$KEYCLOAK_HOME/data/import/bench-realm.json"
    local url=http://127.0.0.1:$KEYCLOAK_PORT/realms/bench/protocol/openid-connect/token started
    started=$(now)
    pin_server "$KEYCLOAK_HOME/bin/kc.sh" start-dev --http-host 127.0.0.1 \
        --http-port $KEYCLOAK_PORT --import-realm --log-level=warn >"$WORK/keycloak.log" 2>&1 &
    SERVER_PID=$!
    MEASURE_PID=$SERVER_PID
    local auth startup
    auth=$(basic bench "$SECRET")
    startup=$(wait_first_token "$started" "$url" "$auth")
    # kc.sh execs the JVM (or runs it as a child when it re-augments): measure the JVM.
    MEASURE_PID=$(pgrep -P "$SERVER_PID" java | tail -1 || true)
    [[ -n $MEASURE_PID ]] || MEASURE_PID=$SERVER_PID
    measure keycloak "Keycloak $KEYCLOAK_VERSION start-dev" "$url" "$auth" "$startup" "$KEYCLOAK_WARM_CAP_SECONDS" "$KEYCLOAK_WARM_MIN_SECONDS"
    stop_server
}

# The floor's two halves under the same load generator as the servers:
# sigil-bench serve-floor answers a bare POST with a token-sized body
# (`/baseline-large`), and the same plus one signature (`/baseline-sign`).
run_floor() {
    port_free $FLOOR_PORT || die "port $FLOOR_PORT is taken"
    local base=http://127.0.0.1:$FLOOR_PORT started startup
    started=$(now)
    pin_server "$SIGIL_BENCH_BIN" serve-floor --listen 127.0.0.1:$FLOOR_PORT --algorithm ES256 >"$WORK/floor.log" 2>&1 &
    SERVER_PID=$!
    MEASURE_PID=$SERVER_PID
    startup=$(wait_first_token "$started" "$base/baseline-large" "")
    ALG=- MEASURE_SWEEP='' measure floor-bare "Floor: bare round trip, token-sized body (sigil-bench serve-floor)" \
        "$base/baseline-large" "" "$startup" "$WARM_CAP_SECONDS"
    ALG=ES256 MEASURE_SWEEP='' measure floor-sign "Floor measured directly: the same + one ES256 signature" \
        "$base/baseline-sign" "" "$startup" "$WARM_CAP_SECONDS"
    stop_server
}

floor() {
    log "Sigil's floor: sigil-bench (DESIGN §9), server and load each on their own core"
    nice -n "$NICE" taskset -c "$SERVER_CPU,$LOAD_CPU" "$SIGIL_BENCH_BIN" --algorithms ES256 >"$OUT/sigil-bench.txt" 2>&1 ||
        die "sigil-bench failed: $(tail -3 "$OUT/sigil-bench.txt")"
}

# ---------------------------------------------------------------- main

STARTED_AT=$(date -u '+%Y-%m-%d %H:%M UTC')
build_sigil
[[ " $SERVERS " == *" hydra"* ]] && build_hydra
[[ " $SERVERS " == *" keycloak "* ]] && fetch_keycloak
rm -f "$OUT/results.tsv" "$OUT/sweep.tsv"
{
    echo "date: $STARTED_AT"
    echo "host: $(uname -srm), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "java: $(java -version 2>&1 | head -1)"
    echo "go: $(go version)"
    echo "settings: NICE=$NICE SIGIL_EXTRA_CLIENTS=$SIGIL_EXTRA_CLIENTS CONNECTIONS=$CONNECTIONS MEASURE_SECONDS=$MEASURE_SECONDS SWEEP='$SWEEP' SWEEP_SECONDS=$SWEEP_SECONDS WARM_ROUND_SECONDS=$WARM_ROUND_SECONDS WARM_GAIN_PCT=$WARM_GAIN_PCT WARM_CAP_SECONDS=$WARM_CAP_SECONDS KEYCLOAK_WARM_CAP_SECONDS=$KEYCLOAK_WARM_CAP_SECONDS KEYCLOAK_WARM_MIN_SECONDS=$KEYCLOAK_WARM_MIN_SECONDS SERVER_CPU=$SERVER_CPU LOAD_CPU=$LOAD_CPU"
} >"$OUT/machine.txt"
((FLOOR == 0)) || floor
for server in $SERVERS; do
    case $server in
    floor) run_floor ;;
    sigil) run_sigil ;;
    hydra) run_hydra hydra "" ;;
    hydra-pbkdf2-1) run_hydra hydra-pbkdf2-1 1 ;;
    keycloak) run_keycloak ;;
    *) die "unknown server $server" ;;
    esac
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
python3 "$PEERS/report.py" "$OUT"
(cd "$OUT" && gnuplot "$PEERS/plot.gp")
log "wrote $OUT/results.md and $OUT/throughput-p99.png"
((ERRORS == 0)) || die "$ERRORS responses failed the check (status 200 + access_token) or had socket errors"
