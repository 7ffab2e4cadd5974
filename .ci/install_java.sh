#!/usr/bin/env bash
# Install a Java 17 runtime (Debian's `openjdk-17-jre-headless`) for the Spark engine's tests (pyspark runs a
# local JVM). Idempotent: does nothing (and reaches no network) when `java -version` already reports 17+.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

java_major() {
    java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

if command -v java >/dev/null 2>&1 && [[ "$(java_major)" -ge 17 ]]; then
    echo "install_java: Java already installed ($(java -version 2>&1 | head -n 1))"
    exit 0
fi

apt_install install_java openjdk-17-jre-headless
java -version
