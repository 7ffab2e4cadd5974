#!/usr/bin/env bash
# Install the PostgreSQL server binaries (Debian's `postgresql` package) for tests/test_scaleout.py.
# Idempotent: does nothing (and reaches no network) when initdb, pg_ctl and postgres are already there.
# The test starts its own throwaway cluster in a temporary folder; the package's system cluster
# (if Debian created one) is left stopped.
set -euo pipefail

find_bin() {
    ls -1d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(find_bin || true)"
if [[ -n "$BIN" && -x "$BIN/initdb" && -x "$BIN/pg_ctl" && -x "$BIN/postgres" ]]; then
    echo "install_postgres: PostgreSQL already installed ($("$BIN/postgres" --version))"
    exit 0
fi

SUDO=""
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_postgres: need root (or sudo) to apt-get install postgresql" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql
BIN="$(find_bin)"
"$BIN/postgres" --version
