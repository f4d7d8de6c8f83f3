#!/usr/bin/env python3
"""Issue 17: greeting latency of a first contact against a remembered client.

Connects to a running node's inbound farm from fresh loopback source addresses (127.0.0.N, each
a first contact) and then again from each of them (remembered), and prints the time from
connect to the greeting's last line for both, in milliseconds (median and max).

    bench/greeting.py HOST:PORT [--clients N]

Start the node with the default `screen` (pregreet 2 s on inbound-mx, remembered a day). The
first-contact figure is the pregreet wait plus the connect; the remembered one is the connect.
"""
import socket
import statistics
import sys
import time


def greeting_ms(host, port, source):
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=30, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line or line[3:4] != b"-":
                break
        elapsed = (time.perf_counter() - start) * 1000
        s.sendall(b"QUIT\r\n")
        f.readline()
    return elapsed


def main():
    if len(sys.argv) < 2 or ":" not in sys.argv[1]:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    clients = int(sys.argv[sys.argv.index("--clients") + 1]) if "--clients" in sys.argv else 10
    sources = [f"127.0.{1 + i // 250}.{2 + i % 250}" for i in range(clients)]
    first = [greeting_ms(host, int(port), src) for src in sources]
    again = [greeting_ms(host, int(port), src) for src in sources]
    for name, xs in (("first contact", first), ("remembered", again)):
        print(f"{name:14} median {statistics.median(xs):8.1f} ms   max {max(xs):8.1f} ms   ({len(xs)} clients)")


if __name__ == "__main__":
    main()
