#!/usr/bin/env bash
# mtac as the "front" target of ../shared/bench (the peers harness):
#   FRONT_CMD='/work/main/bench/mtac-front.sh {port} {backend_port}' \
#     ../shared/bench/peers.sh --targets "direct postfix-proxy haraka"
# Writes a policy that accepts the harness's recipient domain (example.net) and relays without a
# queue to the harness's smtp-sink, then runs the release binary in the foreground.
set -eu
port=${1:?port} backend=${2:?backend port}
here=$(cd "$(dirname "$0")" && pwd)
state=${BENCH_STATE:-/tmp/mtac-bench}/mtac
spool=/dev/shm/mtac-bench-$port
mkdir -p "$state" "$spool"
cat >"$state/policy.kdl" <<POLICY
hostname "mx.bench.example"
spool "$spool"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:$port"
    limits {
        connections 100000
        connections-per-ip 100000
        recipients 1000
    }
    local-domains "example.net"
    relay {
        backend "smtp://127.0.0.1:$backend"
    }
}
POLICY
# No admin listener: several fronts (old and new binaries) may run side by side in one harness run.
exec "${MTAC_BIN:-$here/../target/release/mtac}" run --policy "$state/policy.kdl" --admin off
