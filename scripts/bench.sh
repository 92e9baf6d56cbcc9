#!/usr/bin/env bash
# lakegate's benchmarks (see benches/README.md). Builds in release, sets up the Python venv
# (ADBC driver, pyarrow, DuckDB), generates TPC-H as Delta under target/bench/, and runs.
#
#   scripts/bench.sh quick           SF 0.1, all 22 queries in all six modes (a few minutes)
#   scripts/bench.sh modes SF        the same at scale factor SF (1 is the standard)
#   scripts/bench.sh wire [ROWS]     10M-row result: raw DoGet vs Flight SQL vs ADBC, MB/s,
#                                    and lakegate's two paths again over TLS
#   scripts/bench.sh products [ROWS] data product calls on a 10M-row register: 1 and 8 ADBC
#                                    clients, a batch of 10,000, DuckDB on the same Parquet
#   scripts/bench.sh micro           policy decision / rewrite / TPE micro-benchmarks
#   scripts/bench.sh memory [SF]     SF 10 (default) under a 4 GiB memory pool with spilling
#                                    (then Q18 again with sort-merge joins)
#
# RUNS (default 3) and WARMUP (default 1) set the timed and warm-up runs of `modes`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BENCH="$TARGET/bench"
mkdir -p "$BENCH"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

cargo build --release -p lakegate-benches --bin lakegate-bench
BIN="$TARGET/release/lakegate-bench"
PY="$ROOT/.venv/bin/python"

modes() {
  local sf=$1
  "$BIN" gen --dir "$BENCH/sf$sf" --sf "$sf"
  "$BIN" run --dir "$BENCH/sf$sf" --python "$PY" --runs "${RUNS:-3}" --warmup "${WARMUP:-1}" \
    --json "$BENCH/sf$sf/report.json"
}

case "${1:-quick}" in
  quick) modes 0.1 ;;
  modes) modes "${2:?scale factor, e.g. 1}" ;;
  wire)
    rows=${2:-10000000}
    "$BIN" gen --dir "$BENCH/wire" --sf 0.01 --wire-rows "$rows"
    "$BIN" wire --dir "$BENCH/wire" --python "$PY" --runs "${RUNS:-3}" --tls
    ;;
  products)
    "$BIN" products --dir "$BENCH/products" --rows "${2:-10000000}" --python "$PY"
    ;;
  micro) cargo bench -p lakegate-benches --bench policy ;;
  memory)
    sf=${2:-10}
    "$BIN" gen --dir "$BENCH/sf$sf" --sf "$sf"
    "$BIN" memory --dir "$BENCH/sf$sf" --limit $((4 << 30))
    # The query whose hash join outgrows the pool, again with sort-merge joins (they spill).
    "$BIN" memory --dir "$BENCH/sf$sf" --limit $((4 << 30)) --sort-merge-joins --queries 18
    ;;
  *) echo "usage: scripts/bench.sh quick | modes SF | wire [ROWS] | products [ROWS] | micro | memory [SF]"; exit 2 ;;
esac
