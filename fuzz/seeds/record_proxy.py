#!/usr/bin/env python3
"""Records one TCP connection's two byte streams while forwarding it: how the RTMP seeds of
fuzz/corpus were captured (see fuzz/seeds/README.md).

usage: record_proxy.py LISTEN_PORT TARGET_PORT OUT_PREFIX
Writes OUT_PREFIX.c2s (client to server) and OUT_PREFIX.s2c (server to client) for the first
connection accepted, then exits when both sides have closed.
"""
import socket
import sys
import threading


def pump(src, dst, out):
    with open(out, "wb") as f:
        while True:
            data = src.recv(65536)
            if not data:
                break
            f.write(data)
            dst.sendall(data)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main():
    listen_port, target_port, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", listen_port))
    srv.listen(1)
    print("ready", flush=True)
    client, _ = srv.accept()
    upstream = socket.create_connection(("127.0.0.1", target_port))
    threads = [
        threading.Thread(target=pump, args=(client, upstream, prefix + ".c2s")),
        threading.Thread(target=pump, args=(upstream, client, prefix + ".s2c")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
