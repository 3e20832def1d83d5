#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for the service's PostgreSQL tests and print the
# TPM2_ATTEST_TEST_POSTGRES_URL to use. Installs the server when missing (Debian, as root).
# Usage: eval "$(.ci/postgres.sh start)" ... .ci/postgres.sh stop
set -euo pipefail
DIR=${PGTEST_DIR:-/tmp/tpm2-attest-pgtest}
PORT=${PGTEST_PORT:-}

bin_dir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && echo "$d"
}

stop_cluster() {
    local B
    B=$(bin_dir)
    if [ -n "$B" ] && [ -d "$DIR/data" ]; then
        runuser -u postgres -- "$B/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
}

case "${1:-start}" in
start)
    stop_cluster   # a cluster left by an earlier run would hold its port and directory
    if [ -z "$(bin_dir)" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    B=$(bin_dir)
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    rm -rf "$DIR"; mkdir -p "$DIR"; chown postgres "$DIR"
    runuser -u postgres -- "$B/initdb" -D "$DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
    started=
    for _ in 1 2 3; do
        # A free loopback port each try (a fixed one can still be held by an earlier run).
        [ -n "$PORT" ] || PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        if runuser -u postgres -- "$B/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 60 \
            -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null; then
            started=1; break
        fi
        PORT=${PGTEST_PORT:-}
        sleep 1
    done
    if [ -z "$started" ]; then
        echo "PostgreSQL did not start; its log:" >&2; tail -n 30 "$DIR/log" >&2 || true
        exit 1
    fi
    runuser -u postgres -- "$B/createdb" -h 127.0.0.1 -p "$PORT" -U postgres tpm2attest
    echo "export TPM2_ATTEST_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$PORT/tpm2attest"
    ;;
stop)
    stop_cluster
    ;;
esac
