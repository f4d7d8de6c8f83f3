#!/usr/bin/env python3
"""The node's memory while many large messages wait on a slow scanner (issue 14, item 5).

    bench/scan-memory.py [--sessions 20] [--size-mib 10] [--hold 6] [--old]

SESSIONS clients on one address each send one SIZE MiB message at once to `mtac run`, whose farm
scans with clamd and spamd stand-ins that accept the message but hold it: each waits HOLD
seconds before it reads a byte, then reads everything and answers clean. While every message is
held, the node's resident memory (VmRSS) is sampled; its peak (VmHWM) is read at the end. The
back end is a small SMTP sink in this script. Before issue 14 the node read each message into
memory for the scanners (and copied it again for rspamd); now each scanner is sent 64 KiB
chunks read from the spool, so the memory per waiting message is a buffer.

--old writes a policy the node before issue 14 understands (no transfers-per-ip: it had no
per-client limit), for a before/after run with MTAC_BIN pointing at the old binary.
Needs target/release/mtac (or MTAC_BIN). The spool is a tmpfs (/dev/shm): its pages are the
RAM disk's, not the node's, and are not in VmRSS.
"""
import argparse, os, shutil, socket, socketserver, subprocess, tempfile, threading, time

from smtp_client import send_message

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("MTAC_BIN", os.path.join(HERE, "..", "target", "release", "mtac"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on {port}")


def slow_scanner(port, hold, answer):
    """A scanner that holds each request HOLD seconds before reading it, then reads to the end
    of its framing (clamd: a zero-length chunk; spamd: Content-length) and answers `answer`."""
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            time.sleep(hold)
            f = self.request.makefile("rb")
            first = f.read(10)
            if first == b"zINSTREAM\0":
                while True:
                    n = int.from_bytes(f.read(4), "big")
                    if n == 0: break
                    f.read(n)
            else:
                head = first + b"".join(iter(lambda: f.readline(), b"\r\n"))
                length = int(head.split(b"Content-length: ")[1].split(b"\r\n")[0])
                f.read(length)
            self.request.sendall(answer)

    return serve(port, Handler)


def serve(port, handler):
    """A threaded TCP server for `handler` on loopback, running in the background."""
    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        # socketserver's default backlog is 5: the node opens a connection per message at
        # once (20 to the sink before its pool has any), and a connection the full queue drops
        # after the handshake waits for a greeting until the 5-minute timeout.
        request_queue_size = 128
    server = Server(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def sink(port):
    """An SMTP back end that takes every message and forgets it."""
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            w = self.wfile.write
            w(b"220 sink ESMTP\r\n")
            while True:
                line = self.rfile.readline()
                if not line: return
                verb = line[:4].upper()
                if verb == b"EHLO": w(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 104857600\r\n")
                elif verb == b"DATA":
                    w(b"354 go\r\n")
                    for data in iter(self.rfile.readline, b".\r\n"):
                        if not data: return
                    w(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT": w(b"221 bye\r\n"); return
                else: w(b"250 ok\r\n")

    return serve(port, Handler)


def send(port, body, results, i):
    try:
        send_message(port, body)
        results[i] = "250"
    except AssertionError as e:
        results[i] = str(e)


def status(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=20); ap.add_argument("--size-mib", type=int, default=10)
    ap.add_argument("--hold", type=float, default=6.0); ap.add_argument("--old", action="store_true")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    front, clam, spam, back = (free_port() for _ in range(4))
    spool = f"/dev/shm/mtac-scan-memory-{front}"
    slow_scanner(clam, a.hold, b"stream: OK\0")
    slow_scanner(spam, a.hold, b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 1.0 / 5.0\r\n\r\n")
    sink(back)
    limits = f"connections-per-ip {a.sessions + 5}\n        message-size \"{a.size_mib + 5}MiB\""
    if not a.old:
        limits += f"\n        transfers-per-ip {a.sessions}"
    open(f"{d}/policy.kdl", "w").write(f'''hostname "mx.memory-bench.example"
spool "{spool}"
admin #false
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{front}"
    local-domains "example.net"
    limits {{
        {limits}
        timeout data="5m" relay="5m"
    }}
    scan {{
        clamav "127.0.0.1:{clam}" timeout="5m"
        spamassassin "127.0.0.1:{spam}" timeout="5m"
    }}
    relay {{
        backend "smtp://127.0.0.1:{back}"
    }}
}}
''')
    node = subprocess.Popen([BIN, "run", "--policy", f"{d}/policy.kdl"], env={**os.environ, "RUST_LOG": "warn"},
                            stderr=subprocess.DEVNULL)
    try:
        wait(front)
        idle = status(node.pid, "VmRSS")
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        head = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: memory\r\n\r\n"
        body = head + line * (a.size_mib * 1024 * 1024 // len(line)) + b".\r\n"
        results = [None] * a.sessions
        threads = [threading.Thread(target=send, args=(front, body, results, i)) for i in range(a.sessions)]
        started = time.time()
        for t in threads: t.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append(status(node.pid, "VmRSS")); time.sleep(0.2)
        for t in threads: t.join()
        peak = status(node.pid, "VmHWM")
        ok = sum(1 for r in results if r and r.startswith("250"))
        print(f"{a.sessions} sessions x {a.size_mib} MiB, scanners hold each message {a.hold:.0f} s; "
              f"{ok}/{a.sessions} answered 250 in {time.time() - started:.1f} s")
        print(f"RSS idle {idle:.1f} MiB; while held: median {sorted(samples)[len(samples) // 2]:.1f} MiB, "
              f"max sampled {max(samples):.1f} MiB; peak (VmHWM) {peak:.1f} MiB")
        if ok != a.sessions:
            print("replies:", sorted(set(r or "none" for r in results)))
    finally:
        node.terminate()
        try: node.wait(timeout=10)
        except subprocess.TimeoutExpired: node.kill()
        shutil.rmtree(spool, ignore_errors=True); shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
