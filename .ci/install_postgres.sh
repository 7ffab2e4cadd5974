#!/usr/bin/env bash
# Install the PostgreSQL server binaries (Debian's `postgresql` package) for tests/test_scaleout.py.
# Idempotent: does nothing (and reaches no network) when initdb, pg_ctl and postgres are already there.
# The test starts its own throwaway cluster in a temporary folder; the package's system cluster
# (if Debian created one) is left stopped.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

find_bin() {
    ls -1d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(find_bin || true)"
if [[ -n "$BIN" && -x "$BIN/initdb" && -x "$BIN/pg_ctl" && -x "$BIN/postgres" ]]; then
    echo "install_postgres: PostgreSQL already installed ($("$BIN/postgres" --version))"
    exit 0
fi

apt_install install_postgres postgresql
BIN="$(find_bin)"
"$BIN/postgres" --version
