#!/usr/bin/env python3
"""A tiny authoritative DNS responder on UDP for the benchmark harness (standard library only).

    bench/dns-zone.py PORT 'NAME TYPE VALUE' ...      (TYPE: A, TXT or PTR)

Answers the records given, NODATA for a known name of another type, NXDOMAIN for the rest;
every answer carries an SOA (minimum 300 s) so the node's resolver caches negative answers too.
It is not a DNS server: no TCP, no compression of questions, one question per query. It only
has to give mtac's resolver (which caches every answer) the SPF and DMARC records that
smtp-source's sender and HELO name need; with a warm cache it is asked almost never.
"""
import socket
import struct
import sys

TTL = 300
TYPES = {"A": 1, "PTR": 12, "TXT": 16}
SOA = 6


def encode_name(name):
    out = b""
    for label in name.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def rdata(kind, value):
    if kind == "A":
        return socket.inet_aton(value)
    if kind == "PTR":
        return encode_name(value)
    text = value.encode()
    return b"".join(bytes([len(text[i:i + 255])]) + text[i:i + 255] for i in range(0, max(len(text), 1), 255))


def record(name, kind, data):
    return encode_name(name) + struct.pack(">HHIH", kind, 1, TTL, len(data)) + data


def soa():
    data = encode_name("ns.bench.") + encode_name("hostmaster.bench.") + struct.pack(">IIIII", 1, 3600, 600, 86400, TTL)
    return record(".", SOA, data)


def parse_question(packet):
    labels, i = [], 12
    while i < len(packet) and packet[i]:
        n = packet[i]
        labels.append(packet[i + 1:i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    qtype, qclass = struct.unpack(">HH", packet[i + 1:i + 5])
    return ".".join(labels), qtype, qclass, packet[12:i + 5]


def main():
    port = int(sys.argv[1])
    zone = {}
    for spec in sys.argv[2:]:
        name, kind, value = spec.split(" ", 2)
        zone.setdefault(name.strip(".").lower(), []).append((TYPES[kind], rdata(kind, value)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            name, qtype, _, question = parse_question(packet)
        except (IndexError, struct.error):
            continue
        (ident, flags) = struct.unpack(">HH", packet[:4])
        records = zone.get(name)
        answers = [record(name, t, d) for t, d in records or [] if t == qtype]
        rcode = 3 if records is None else 0
        authority = [] if answers else [soa()]
        header = struct.pack(">HHHHHH", ident, 0x8400 | (flags & 0x0100) | rcode, 1, len(answers), len(authority), 0)
        sock.sendto(header + question + b"".join(answers) + b"".join(authority), peer)


if __name__ == "__main__":
    main()
