#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the benchmark need; idempotent.
set -euo pipefail

packages=(
  build-essential pkg-config
  libevent-dev libssl-dev libyaml-dev libjansson-dev libcmocka-dev
  libpg-query-dev libprotobuf-c-dev libcurl4-openssl-dev libsqlite3-dev libpq-dev libmicrohttpd-dev libzstd-dev sqlite3
  postgresql postgresql-client pgbouncer
  python3-pytest python3-pytest-timeout python3-psycopg python3-jwt python3-cryptography python3-zstandard
  default-jdk-headless libpostgresql-jdbc-java
  nodejs chromium
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# npm may come from NodeSource rather than Debian; install Debian's only when none is there.
if ! command -v npm >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm
fi

# node-postgres for the client-compatibility tests, the MCP SDK's client for the MCP tests and
# playwright-core (it drives Debian's chromium; it downloads no browser) for the console's
# tests, kept inside the repository's test folder.
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -d "$here/tests/node/node_modules/pg" ] || [ ! -d "$here/tests/node/node_modules/pg-copy-streams" ] ||
   [ ! -d "$here/tests/node/node_modules/@modelcontextprotocol/sdk" ] ||
   [ ! -d "$here/tests/node/node_modules/playwright-core" ]; then
  (cd "$here/tests/node" && npm install --no-audit --no-fund --loglevel=error)
fi
