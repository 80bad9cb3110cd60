#!/usr/bin/env python3
"""A hostile OPC UA server for tibet-twin's tests: speaks just enough UA-TCP to get a client to
the point where it misbehaves, to prove the client closes the channel with a typed error.

Usage: opcua_hostile_server.py MODE
Prints "READY PORT" once listening on 127.0.0.1 (a free port), serves connections one after
another, each the same way, until stdin closes. MODE, after reading the client's Hello:
  err         an ERR message (BadTcpEndpointUrlInvalid, "no such endpoint")
  badack      an Acknowledge with a 100-byte receive buffer (Part 6 requires 8192)
  wrongtype   a message of type "XYZ"
  huge        ACK, then an OPN chunk header announcing 4 GiB - 16 bytes
  truncated   ACK, then an OPN chunk announcing 200 bytes, 30 sent, connection closed
  garbage     ACK, then an OPN chunk whose body is not a valid message (NodeId encoding 0x3F)
  chunkflood  ACK, a valid OpenSecureChannel response, then to the next request an endless run
              of 'C' (more to come) chunks
  wrongid     ACK, a valid OpenSecureChannel response, then a response to a request never made
  seqjump     ACK, a valid OpenSecureChannel response (sequence number 1), then a response
              with sequence number 5
  abort       ACK, a valid OpenSecureChannel response, then an abort chunk (BadRequestTooLarge)
  silent      ACK, then nothing
"""
import socket
import struct
import sys
import threading
import time

MODE = sys.argv[1]
POLICY_NONE = b"http://opcfoundation.org/UA/SecurityPolicy#None"


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        part = c.recv(n - len(buf))
        if not part:
            raise EOFError
        buf += part
    return buf


def recv_message(c):
    head = recv_exact(c, 8)
    size = struct.unpack("<I", head[4:8])[0]
    return head, recv_exact(c, size - 8)


def ua_string(b):
    return struct.pack("<i", len(b)) + b


def ack(recv_buffer=65535):
    body = struct.pack("<IIIII", 0, recv_buffer, 65535, 0, 0)
    return b"ACKF" + struct.pack("<I", 8 + len(body)) + body


def request_id_of_open(body):
    # SecureChannelId, SecurityPolicyUri, SenderCertificate, ReceiverCertificateThumbprint, seq, request id
    off = 4
    for _ in range(3):
        n = struct.unpack("<i", body[off:off + 4])[0]
        off += 4 + max(0, n)
    return struct.unpack("<I", body[off + 4:off + 8])[0]


def open_response(request_id):
    response_header = struct.pack("<qIIB", 0, 1, 0, 0) + struct.pack("<i", -1) + b"\x00\x00\x00"
    body = b"\x01\x00" + struct.pack("<H", 449) + response_header
    body += struct.pack("<IIIqI", 0, 7, 1, 0, 600000) + struct.pack("<i", -1)
    chunk = struct.pack("<I", 7) + ua_string(POLICY_NONE) + struct.pack("<ii", -1, -1) + struct.pack("<II", 1, request_id) + body
    return b"OPNF" + struct.pack("<I", 8 + len(chunk)) + chunk


def msg_chunk(kind, seq, request_id, payload):
    chunk = struct.pack("<IIII", 7, 1, seq, request_id) + payload
    return b"MSG" + kind + struct.pack("<I", 8 + len(chunk)) + chunk


def serve(c):
    recv_message(c)  # Hello
    if MODE == "err":
        body = struct.pack("<I", 0x80830000) + ua_string(b"no such endpoint")
        c.sendall(b"ERRF" + struct.pack("<I", 8 + len(body)) + body)
        return
    if MODE == "badack":
        c.sendall(ack(100))
        return
    if MODE == "wrongtype":
        c.sendall(b"XYZF" + struct.pack("<I", 16) + b"\x00" * 8)
        return
    c.sendall(ack())
    if MODE == "silent":
        time.sleep(30)
        return
    _, open_body = recv_message(c)
    rid = request_id_of_open(open_body)
    if MODE == "huge":
        c.sendall(b"OPNF" + struct.pack("<I", 0xFFFFFFF0) + b"\x00" * 64)
        time.sleep(1)
        return
    if MODE == "truncated":
        c.sendall(b"OPNF" + struct.pack("<I", 200) + b"\x00" * 22)
        return
    if MODE == "garbage":
        chunk = struct.pack("<I", 7) + ua_string(POLICY_NONE) + struct.pack("<ii", -1, -1) + struct.pack("<II", 1, rid) + b"\x3f" * 16
        c.sendall(b"OPNF" + struct.pack("<I", 8 + len(chunk)) + chunk)
        return
    c.sendall(open_response(rid))
    head, body = recv_message(c)
    rid = struct.unpack("<I", body[12:16])[0]
    if MODE == "chunkflood":
        seq = 2
        try:
            while True:
                c.sendall(msg_chunk(b"C", seq, rid, b"\x00" * 1000))
                seq += 1
        except OSError:
            return
    if MODE == "seqjump":
        c.sendall(msg_chunk(b"F", 5, rid, b"\x01\x00" + struct.pack("<H", 464)))
        time.sleep(1)
        return
    if MODE == "abort":
        c.sendall(msg_chunk(b"A", 2, rid, struct.pack("<I", 0x80B80000) + ua_string(b"request too large")))
        time.sleep(1)
        return
    if MODE == "wrongid":
        c.sendall(msg_chunk(b"F", 2, rid + 1000, b"\x01\x00" + struct.pack("<H", 464)))
        time.sleep(1)
        return


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    print(f"READY {s.getsockname()[1]}", flush=True)

    def accept_loop():
        while True:
            c, _ = s.accept()
            try:
                serve(c)
            except (EOFError, OSError):
                pass
            finally:
                c.close()

    threading.Thread(target=accept_loop, daemon=True).start()
    sys.stdin.read()  # until the test closes stdin


if __name__ == "__main__":
    main()
