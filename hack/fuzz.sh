#!/usr/bin/env bash
# Fuzzes the issuer's untrusted-input parsers with cargo-fuzz (libFuzzer):
# fuzz/fuzz_targets/{form,basic,assertion,admission,manifests}.rs.
#
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30 s, all)
#
# Each target runs for SECONDS with a small memory limit; its corpus lives
# outside the repo in ${SIGIL_FUZZ_CORPUS:-~/.cache/sigil/fuzz-corpus}/<target>
# (kept between runs), seeded from fuzz/seeds/<target>. Prints one summary
# line per target and exits non-zero if any target crashed (panic, failed
# invariant, sanitizer report, timeout or out-of-memory); the crashing input
# is in fuzz/artifacts/<target>/ (git-ignored). Reproduce one with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Needs a nightly toolchain; installs cargo-fuzz from crates.io if missing.
# CI runs it for 15 s per target (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(form basic assertion admission manifests)
SECONDS_PER_TARGET="${1:-30}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=("${ALL_TARGETS[@]}")
CORPUS_ROOT="${SIGIL_FUZZ_CORPUS:-$HOME/.cache/sigil/fuzz-corpus}"
RSS_LIMIT_MB="${SIGIL_FUZZ_RSS_MB:-1024}"

if ! [[ "$SECONDS_PER_TARGET" =~ ^[0-9]+$ ]] || [ "$SECONDS_PER_TARGET" -eq 0 ]; then
  echo "usage: hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   targets: ${ALL_TARGETS[*]}" >&2
  exit 2
fi
for target in "${TARGETS[@]}"; do
  [ -f "fuzz/fuzz_targets/$target.rs" ] || { echo "unknown target $target (have: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

# Pinned, like every other tool the project builds: the version this script
# was tried with. Another installed version is replaced.
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo +nightly fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  cargo install cargo-fuzz --version "=$CARGO_FUZZ_VERSION" --locked --force
fi

# cargo-fuzz has no --locked: check first that fuzz/Cargo.lock pins every
# crate already, so the build below resolves nothing when it runs.
(cd fuzz && cargo +nightly tree --locked -q >/dev/null) || {
  echo "fuzz/Cargo.lock is out of date: run (cd fuzz && cargo +nightly tree) and commit it" >&2
  exit 1
}

# One build of every target (debug assertions on, so overflows panic);
# `fuzz run` below then finds them up to date.
cargo +nightly fuzz build --debug-assertions

LOG_DIR="$(mktemp -d)"
trap 'rm -rf "$LOG_DIR"' EXIT
failed=0
summary=()
for target in "${TARGETS[@]}"; do
  corpus="$CORPUS_ROOT/$target"
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  log="$LOG_DIR/$target.log"
  echo "== fuzz $target for ${SECONDS_PER_TARGET}s (corpus $corpus, log $log)" >&2
  started=$(date +%s)
  status=0
  # First corpus dir gets new inputs; the seeds are only read.
  cargo +nightly fuzz run --debug-assertions "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb="$RSS_LIMIT_MB" \
    -timeout=10 \
    -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - started))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)
  if [ -z "$runs" ]; then
    # A crash ends the run before the final stats: take the last status line.
    runs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  fi
  units=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    result="ok"
  else
    failed=1
    crash=$(grep -oE "fuzz/artifacts/$target/[^ ]+" "$log" | tail -n 1 || true)
    result="CRASH (exit $status${crash:+, input $crash})"
    tail -n 60 "$log" >&2
  fi
  line="fuzz $target: ${runs:-0} runs in ${elapsed} s, corpus ${units}, $result"
  echo "$line" >&2
  summary+=("$line")
done
printf '%s\n' "${summary[@]}"
exit "$failed"
