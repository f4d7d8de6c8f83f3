#!/usr/bin/env bash
# mtac as the "front" target of ../shared/bench (the peers harness):
#   FRONT_CMD='/work/main/bench/mtac-front.sh {port} {backend_port}' \
#     ../shared/bench/peers.sh --targets "direct postfix-proxy haraka"
# Writes a policy that accepts the harness's recipient domain (example.net) and relays without a
# queue to the harness's smtp-sink, then runs the release binary in the foreground.
#
# MTAC_FRONT_AUTH=on (or 1) adds sender authentication (`spf`, `dmarc`, which turns on `dkim`)
# and a `dns` block pointing at bench/dns-zone.py, started here on port-1000 with the SPF and
# DMARC records of smtp-source's sender (sender@example.com, from 127.0.0.1) and HELO name, so
# every message gets real lookups through the node's resolver and cache. With the harness:
#   FRONT_CMD='env MTAC_FRONT_AUTH=$VARIANT bench/mtac-front.sh {port} {backend_port}' \
#     ../shared/bench/peers.sh --targets "direct front:off front:on"
#
# MTAC_FRONT_MILTER=on (or 1, or milter) adds one milter: Debian's opendkim verifying
# (AlwaysAddARHeader), started here on port-2000, so every message costs one milter
# conversation. MTAC_FRONT_JOURNAL=on (or 1, or journal) turns the decision journal on (in the
# state directory, addresses in full). Both from one harness variable:
#   FRONT_CMD='env MTAC_FRONT_MILTER=$VARIANT MTAC_FRONT_JOURNAL=$VARIANT bench/mtac-front.sh {port} {backend_port}' \
#     ../shared/bench/peers.sh --targets "direct front:off front:milter front:journal"
#
# MTAC_FRONT_TLS_CERT and MTAC_FRONT_TLS_KEY (PEM files) give the farm `tls`, so it offers
# STARTTLS (bench/tls-peers.py sets them).
set -eu
port=${1:?port} backend=${2:?backend port}
here=$(cd "$(dirname "$0")" && pwd)
state=${BENCH_STATE:-/tmp/mtac-bench}/mtac
spool=/dev/shm/mtac-bench-$port
mkdir -p "$state" "$spool"
auth="" dns=""
case "${MTAC_FRONT_AUTH:-off}" in
on | 1)
    dns_port=$((port - 1000))
    helo=$(hostname)
    # In the front's process group: the harness's stop ends it with the node.
    python3 "$here/dns-zone.py" "$dns_port" \
        "example.com TXT v=spf1 ip4:127.0.0.0/8 -all" \
        "_dmarc.example.com TXT v=DMARC1; p=reject" \
        "$helo TXT v=spf1 ip4:127.0.0.0/8 -all" &
    dns="dns timeout=\"2s\" {
    nameserver \"127.0.0.1:$dns_port\"
}"
    auth="spf
    dmarc"
    ;;
esac
milter=""
case "${MTAC_FRONT_MILTER:-off}" in
on | 1 | milter)
    milter_port=$((port - 2000))
    cat >"$state/opendkim.conf" <<CONF
Mode v
AlwaysAddARHeader yes
AuthservID mx.bench.example
Socket inet:$milter_port@127.0.0.1
Background no
Syslog no
CONF
    # In the front's process group: the harness's stop ends it with the node.
    opendkim -f -x "$state/opendkim.conf" &
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$milter_port") 2>/dev/null && break
        sleep 0.1
    done
    milter="milter \"inet:127.0.0.1:$milter_port\" name=\"opendkim\" timeout=\"10s\""
    ;;
esac
journal=""
case "${MTAC_FRONT_JOURNAL:-off}" in
on | 1 | journal)
    rm -f "$state"/journal*
    journal="journal \"$state/journal\" max-size=\"1GiB\" files=4"
    ;;
esac
tls=""
if [ -n "${MTAC_FRONT_TLS_CERT:-}" ]; then
    tls="tls certificate=\"$MTAC_FRONT_TLS_CERT\" key=\"${MTAC_FRONT_TLS_KEY:?MTAC_FRONT_TLS_KEY with MTAC_FRONT_TLS_CERT}\""
fi
cat >"$state/policy.kdl" <<POLICY
hostname "mx.bench.example"
spool "$spool"
$journal
$dns
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:$port"
    limits {
        connections 100000
        connections-per-ip 100000
        recipients 1000
    }
    local-domains "example.net"
    $auth
    $milter
    $tls
    relay {
        backend "smtp://127.0.0.1:$backend"
    }
}
POLICY
# No admin listener: several fronts (old and new binaries) may run side by side in one harness run.
# MTAC_FRONT_WORKERS=N: N session threads (default: one per CPU).
exec "${MTAC_BIN:-$here/../target/release/mtac}" run --policy "$state/policy.kdl" --admin off ${MTAC_FRONT_WORKERS:+--workers "$MTAC_FRONT_WORKERS"}
