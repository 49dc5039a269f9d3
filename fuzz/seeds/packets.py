#!/usr/bin/env python3
"""Writes the `ebpf` target's seed frames, the shapes of the data plane's fixture table:
requests to the VIP (10.0.0.1 / fd00::1 port 8080) over IPv4 and IPv6, replies from an
origin port, other traffic, and malformed, fragmented and option-carrying frames. Checksums
are computed from scratch.

usage: packets.py CORPUS_DIR   (writes CORPUS_DIR/ebpf/*)
"""
import ipaddress
import os
import struct
import sys

SYN, ACK, PSH = 0x02, 0x10, 0x08
MAC = bytes.fromhex("020000000001") + bytes.fromhex("020000000002")


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data)//2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def tcp(src, dst, sport, dport, flags, payload=b"", v6=False):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000 if flags & ACK else 0, 5 << 4, flags, 65535, 0, 0)
    seg = hdr + payload
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if v6:
        pseudo = s + d + struct.pack("!I3xB", len(seg), 6)
    else:
        pseudo = s + d + struct.pack("!xBH", 6, len(seg))
    c = csum(pseudo + seg)
    return seg[:16] + struct.pack("!H", c) + seg[18:]


def ipv4(src, dst, l4, proto=6, frag=0, options=b""):
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 1, frag, 64, proto, 0,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return MAC + b"\x08\x00" + h + l4


def ipv6(src, dst, l4, nxt=6):
    h = struct.pack("!IHBB16s16s", 6 << 28, len(l4), nxt, 64,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return MAC + b"\x86\xdd" + h + l4


def v4(src, sport, dst, dport, flags, payload=b"", **kw):
    return ipv4(src, dst, tcp(src, dst, sport, dport, flags, payload), **kw)


def v6(src, sport, dst, dport, flags, payload=b"", **kw):
    return ipv6(src, dst, tcp(src, dst, sport, dport, flags, payload, v6=True), **kw)


def main():
    out = os.path.join(sys.argv[1], "ebpf")
    os.makedirs(out, exist_ok=True)
    get = b"GET /hls/demo/index.m3u8 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n"
    syn = v4("10.1.1.1", 40000, "10.0.0.1", 8080, SYN)
    frames = {
        "v4-syn-to-vip": syn,
        "v4-get-to-vip": v4("10.1.1.1", 40000, "10.0.0.1", 8080, ACK | PSH, get),
        "v4-ack-unknown-flow": v4("10.1.1.3", 40002, "10.0.0.1", 8080, ACK),
        "v4-reply-from-primary": v4("10.0.0.1", 8081, "10.1.1.1", 40000, SYN | ACK),
        "v4-direct-to-origin": v4("10.1.1.4", 40003, "10.0.0.1", 8081, SYN),
        "v4-other-port": v4("10.1.1.1", 40000, "10.0.0.1", 22, SYN),
        "v4-options": v4("10.1.1.5", 40005, "10.0.0.1", 8080, SYN, options=b"\x01\x01\x01\x00"),
        "v4-fragment": v4("10.1.1.6", 40006, "10.0.0.1", 8080, SYN, frag=0x2000),
        "v4-udp": ipv4("10.1.1.1", "10.0.0.1", struct.pack("!HHHH", 4000, 8080, 12, 0) + b"abcd", proto=17),
        "v4-truncated": syn[:14 + 20 + 10],
        "v6-syn-to-vip": v6("fd00::99", 50000, "fd00::1", 8080, SYN),
        "v6-data-to-vip": v6("fd00::99", 50000, "fd00::1", 8080, ACK, b"hello"),
        "v6-reply-from-backup": v6("fd00::1", 8082, "fd00::99", 50000, ACK, b"segment bytes"),
        "v6-fragment-header": v6("fd00::98", 50001, "fd00::1", 8080, SYN, nxt=44),
        "arp": b"\xff" * 12 + b"\x08\x06" + bytes(28),
        "vlan": syn[:12] + b"\x81\x00" + syn[14:],
    }
    for name, frame in frames.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(frame)


if __name__ == "__main__":
    main()
