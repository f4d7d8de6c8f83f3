#!/usr/bin/env python3
"""Added latency per message: p50/p99 of one 4 KiB message per session, through mtac and
directly to smtp-sink, in the same run (sequential sessions, so latency is not queueing).

    bench/latency.py [--count 1000]

Needs smtp-sink (Debian's postfix package; ../shared/bench/peers.sh installs it) and
target/release/mtac.
"""
import argparse, os, socket, statistics, subprocess, tempfile, time

from smtp_client import send_message

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("MTAC_BIN", os.path.join(HERE, "..", "target", "release", "mtac"))
BODY = b"Subject: latency\r\n\r\n" + (b"x" * 76 + b"\r\n") * 52 + b".\r\n"

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait(port):
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1", port)).close(); return
        except OSError: time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")

def one(port):
    t = time.perf_counter()
    send_message(port, BODY)
    return time.perf_counter() - t

def measure(port, n):
    for _ in range(50): one(port)
    xs = sorted(one(port) for _ in range(n))
    return xs[len(xs) // 2], xs[int(len(xs) * 0.99) - 1]

def main():
    ap = argparse.ArgumentParser(); ap.add_argument("--count", type=int, default=1000); a = ap.parse_args()
    sink_port, front_port = free_port(), free_port()
    sink = subprocess.Popen(["smtp-sink", *(["-u", "postfix"] if os.geteuid() == 0 else []), "-c", f"127.0.0.1:{sink_port}", "1000"], stdout=subprocess.DEVNULL)
    wait(sink_port)
    d = tempfile.mkdtemp()
    policy = os.path.join(d, "policy.kdl")
    open(policy, "w").write(f'''hostname "mx.latency.example"
spool "/dev/shm/mtac-latency-{front_port}"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{front_port}"
    trust-loopback
    local-domains "example.net"
    relay {{
        backend "smtp://127.0.0.1:{sink_port}"
    }}
}}
''')
    node = subprocess.Popen([BIN, "run", "--policy", policy], stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    wait(front_port)
    try:
        d50, d99 = measure(sink_port, a.count)
        m50, m99 = measure(front_port, a.count)
    finally:
        node.terminate(); sink.terminate(); node.wait(); sink.wait()
    us = lambda x: f"{x * 1e6:.0f} µs"
    print(f"{a.count} sequential sessions, 4 KiB")
    print(f"direct to smtp-sink: p50 {us(d50)}, p99 {us(d99)}")
    print(f"through mtac:        p50 {us(m50)}, p99 {us(m99)}")
    print(f"added by mtac:       p50 {us(m50 - d50)}, p99 {us(m99 - d99)}")

if __name__ == "__main__":
    main()
