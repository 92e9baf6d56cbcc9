#!/usr/bin/env bash
# Runs every test of lakegate on a fresh machine. It installs what the tests need (a Python venv
# with the ADBC Flight SQL driver; the Garage S3 server from crates.io), starts Garage on
# 127.0.0.1, then runs the Rust tests (unit, golden and end-to-end) and the Python ADBC tests.
#
#   scripts/test.sh                 everything
#   LAKEGATE_SKIP_CLIPPY=1 ...      skip the clippy pass (fmt is always checked)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK="$ROOT/.test-work"
mkdir -p "$WORK"

step() { printf '\n==> %s\n' "$*"; }

step "formatting"
cargo fmt --all -- --check

step "Python venv with the ADBC driver"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt

step "Garage (S3-compatible server)"
GARAGE_VERSION=2.5.0
if ! command -v garage >/dev/null 2>&1 || ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
  cargo install garage --locked --version "$GARAGE_VERSION"
fi

step "build"
cargo build --workspace --all-targets

if [ "${LAKEGATE_SKIP_CLIPPY:-0}" != "1" ]; then
  step "clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi

step "start Garage on 127.0.0.1"
G="$WORK/garage"
rm -rf "$G" && mkdir -p "$G/meta" "$G/data"
cat > "$G/garage.toml" <<TOML
metadata_dir = "$G/meta"
data_dir = "$G/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
TOML
garage -c "$G/garage.toml" server >"$G/server.log" 2>&1 &
GARAGE_PID=$!
trap 'kill $GARAGE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  if garage -c "$G/garage.toml" status >/dev/null 2>&1; then break; fi
  sleep 1
done
NODE=$(garage -c "$G/garage.toml" status 2>/dev/null | awk '/127.0.0.1/{print $1}' | head -1)
[ -n "$NODE" ] || { echo "Garage did not start:"; cat "$G/server.log"; exit 1; }
garage -c "$G/garage.toml" layout assign -z dc1 -c 1G "$NODE" >/dev/null
garage -c "$G/garage.toml" layout apply --version 1 >/dev/null
garage -c "$G/garage.toml" bucket create lake >/dev/null
KEY_OUT=$(garage -c "$G/garage.toml" key create lake-key)
garage -c "$G/garage.toml" bucket allow --read --write --owner lake --key lake-key >/dev/null
export LAKEGATE_TEST_S3_ENDPOINT="http://127.0.0.1:3900"
export LAKEGATE_TEST_S3_BUCKET="lake"
export LAKEGATE_TEST_S3_KEY_ID=$(printf '%s\n' "$KEY_OUT" | awk -F': *' '/Key ID/{print $2; exit}')
export LAKEGATE_TEST_S3_SECRET=$(printf '%s\n' "$KEY_OUT" | awk -F': *' '/Secret key/{print $2; exit}')
[ -n "$LAKEGATE_TEST_S3_KEY_ID" ] && [ -n "$LAKEGATE_TEST_S3_SECRET" ] || {
  echo "could not read the Garage key:"; printf '%s\n' "$KEY_OUT"; exit 1; }
export LAKEGATE_REQUIRE_S3=1
# The benchmark harness's tiny-scale agreement test runs modes e (ADBC) and f (DuckDB) with it.
export LAKEGATE_PYTHON="$ROOT/.venv/bin/python"

step "Rust tests"
# The tests' servers write to folders under here that outlive each test; last run's go first.
rm -rf "${TMPDIR:-/tmp}/lakegate-tests"
cargo test --workspace --no-fail-fast

step "Rust attacks with every table held in memory ([acceleration])"
LAKEGATE_TEST_ACCELERATE=1 cargo test -p lakegate-tests --no-fail-fast \
  --test attacks --test privacy --test products --test cancel

step "Python ADBC tests"
LAKEGATE_BIN="$ROOT/target/debug/lakegate" .venv/bin/python -m pytest -q tests/python
