#!/usr/bin/env python3
"""A man in the middle for tibet-twin's OPC UA security tests: forwards UA-TCP between a client
and a real server, and on command flips one bit in a message from the server, to prove the
client's signature checks catch it and close the channel.

Usage: opcua_tamper_proxy.py UPSTREAM_PORT
Prints "READY PORT" once listening on 127.0.0.1 (a free port); each connection is forwarded to
127.0.0.1:UPSTREAM_PORT. Reads commands on stdin, answering "ok" on stdout after each:
  flip MSG|OPN   flip the lowest bit of the last byte of the next chunk of that type from the
                 server (inside the signature, or the encrypted part where the mode encrypts)
  quit           exit
Exits when stdin closes.
"""
import socket
import struct
import sys
import threading

UPSTREAM = int(sys.argv[1])
armed = {"type": None}
lock = threading.Lock()


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        part = c.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return buf


def shut(*sockets):
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def pump_raw(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        shut(src, dst)


def pump_chunks(src, dst):
    try:
        while True:
            head = recv_exact(src, 8)
            size = struct.unpack_from("<I", head, 4)[0]
            body = bytearray(recv_exact(src, size - 8))
            kind = head[:3].decode("ascii", "replace")
            with lock:
                if armed["type"] == kind and body:
                    body[-1] ^= 0x01
                    armed["type"] = None
            dst.sendall(head + bytes(body))
    except (OSError, EOFError):
        pass
    finally:
        shut(src, dst)


def serve(listener):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", UPSTREAM))
        threading.Thread(target=pump_raw, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pump_chunks, args=(upstream, client), daemon=True).start()


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    print(f"READY {listener.getsockname()[1]}", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            break
        if parts[0] == "flip" and len(parts) == 2:
            with lock:
                armed["type"] = parts[1]
            print("ok", flush=True)
        else:
            print(f"error unknown command {line.strip()}", flush=True)


if __name__ == "__main__":
    main()
