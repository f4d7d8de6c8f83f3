"""One SMTP session of one message, as the benchmark scripts send it (bench/latency.py,
bench/scan.py): EHLO, MAIL, RCPT, DATA, the body, QUIT; the final reply must be 250."""
import socket

def send_message(port, message):
    """`message` is the DATA payload, dot-terminated (ends with b".\\r\\n")."""
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    def reply():
        while True:
            line = f.readline()
            if line[3:4] != b"-": return line
    reply()
    for cmd in (b"EHLO bench.example.org", b"MAIL FROM:<a@example.org>", b"RCPT TO:<b@example.net>", b"DATA"):
        s.sendall(cmd + b"\r\n"); reply()
    s.sendall(message); r = reply()
    assert r.startswith(b"250"), r
    s.sendall(b"QUIT\r\n"); reply(); s.close()
