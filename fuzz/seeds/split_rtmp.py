#!/usr/bin/env python3
"""Splits a recorded RTMP byte stream (record_proxy.py output) into fuzz seeds:
the handshake, the chunk stream after it, and the AMF0 bodies of its command and data
messages. A minimal chunk reader (RTMP spec 5.3), enough for well-formed captures.

usage: split_rtmp.py CAPTURE NAME CORPUS_DIR
"""
import os
import sys

HANDSHAKE = 1 + 2 * 1536
CHUNK_CAP = 8192  # keep corpus entries small
AMF0_TYPES = {18, 20}


def messages(data):
    pos, chunk_size, streams = 0, 128, {}
    while pos < len(data):
        b0 = data[pos]
        fmt, csid = b0 >> 6, b0 & 0x3F
        pos += 1
        if csid == 0:
            csid, pos = 64 + data[pos], pos + 1
        elif csid == 1:
            csid, pos = 64 + data[pos] + 256 * data[pos + 1], pos + 2
        st = streams.setdefault(csid, {"len": 0, "type": 0, "buf": b""})
        hlen = [11, 7, 3, 0][fmt]
        h = data[pos : pos + hlen]
        pos += hlen
        if fmt <= 1:
            st["len"] = int.from_bytes(h[3:6], "big")
            st["type"] = h[6]
        ts = int.from_bytes(h[0:3], "big") if fmt < 3 else st.get("ts", 0)
        if fmt < 3:
            st["ts"] = ts
        if ts == 0xFFFFFF:
            pos += 4
        take = min(chunk_size, st["len"] - len(st["buf"]))
        if pos + take > len(data):
            return
        st["buf"] += data[pos : pos + take]
        pos += take
        if len(st["buf"]) == st["len"]:
            body, st["buf"] = st["buf"], b""
            if st["type"] == 1:
                chunk_size = int.from_bytes(body[:4], "big") & 0x7FFFFFFF
            yield st["type"], body


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def main():
    capture, name, corpus = sys.argv[1], sys.argv[2], sys.argv[3]
    data = open(capture, "rb").read()
    write(f"{corpus}/rtmp_handshake/{name}", data[: HANDSHAKE + 256])
    stream = data[HANDSHAKE:]
    write(f"{corpus}/rtmp_chunk/{name}", stream[:CHUNK_CAP])
    for i, (type_id, body) in enumerate(messages(stream)):
        if type_id in AMF0_TYPES:
            write(f"{corpus}/amf0/{name}-{i}", body)


if __name__ == "__main__":
    main()
