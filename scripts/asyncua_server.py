#!/usr/bin/env python3
"""An OPC UA server on asyncua 2.1.0 for tibet-twin's tests: an outside OPC UA peer.

Usage: asyncua_server.py [--port N] [--users USER:PASSWORD,...] [--cert DIR]
                         [--secure sign,signandencrypt] [--trust-clients DIR]
                         [--encrypted-passwords-only] [--devices N] [--items N]
  Listens on opc.tcp://127.0.0.1:PORT/ (port 0: any free port), security policy None,
  anonymous login (user name + password instead when --users is given). With --cert DIR
  (DIR/cert.der and DIR/key.pem) it also offers Basic256Sha256 in the modes --secure lists
  (default: SignAndEncrypt only). With --trust-clients DIR it accepts only client certificates
  found in DIR (DER or PEM files) and checks their validity, application URI and key usage;
  without it any client certificate is accepted (DIR must hold at least one certificate).
  With --encrypted-passwords-only a user name login whose password is not encrypted with the
  server's key (UserNameIdentityToken.EncryptionAlgorithm empty) is refused.

Address space, namespace "urn:tibet-twin:test" (index 2):
  Objects/Crane01 (ns=2;s=Crane01) with variables ns=2;s=Crane01.NAME:
    PosX Double 12.5, Load Float 250.0, Mode Int32 1, Name String "crane one",
    Running Boolean true, Counter UInt32 7, Big Int64 -9000000000, Levels Double[] [1.0, 2.5, 4.0],
    Stale Double 3.0 with StatusCode UncertainLastUsableValue,
    Broken Double 0.0 with StatusCode BadSensorFailure, Beat UInt32 0 (the crane model's heartbeat)
  Objects/Many (ns=2;s=Many) with 40 (--items) variables ns=2;s=Many.Item00 … (Int32 = index)
  With --devices N (for benchmarks): Objects/Plant with ns=2;s=Dev000.Mode (Int32 1),
    Dev000.PosX (Double 12.5), Dev000.Load (Float 2500.0) … for N devices
  Also ns=2;i=5001 (numeric), ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a (GUID) and
  ns=2;b=AQID (opaque 01 02 03): Int32 variables under Objects/Ids.

Prints "READY PORT" once it accepts connections. Then reads commands on stdin, answering "ok"
on stdout after each:
  set NAME TYPE VALUE [STATUS]   write Crane01.NAME with a new SourceTimestamp (STATUS: a
                                 StatusCode name, default Good); TYPE double|float|int32|uint32|string
  setmany NAME TYPE VALUE [NAME TYPE VALUE ...]
                                 write several, Good, with one new SourceTimestamp (what a
                                 model does each cycle; `tibet-twin demo --twin opcua` uses it)
  setat NAME TYPE VALUE AGE_MS   the same with a SourceTimestamp AGE_MS in the past
  setserver NAME TYPE VALUE      the same with no SourceTimestamp, only a ServerTimestamp (now)
  run MS                         the crane model: every MS ms rewrite PosX, Load and Mode with their
                                 last written value, status and a new SourceTimestamp, and advance
                                 Beat (UInt32) by one
  beat on|off                    whether `run` advances Beat (off: Beat is rewritten unchanged)
  freeze                         stop `run` (the model stops writing: its values go stale)
  plant MS                       (--devices) every MS ms rewrite every device's nodes with their
                                 values and a new SourceTimestamp
  dev I MODE                     (--devices) set device I's Mode now (and in `plant`); answers
                                 "ok MONOTONIC_NS" with the time of the write
  churn MS                       every MS ms write every Many item a new value (+1)
  drop                           close every client connection
  quit                           exit
Exits when stdin closes.
"""
import argparse
import asyncio
import logging
import sys
import time
import uuid
from datetime import datetime, timezone

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

NS_URI = "urn:tibet-twin:test"


class PasswordUsers:
    def __init__(self, users):
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def variant_type(name):
    return {"double": ua.VariantType.Double, "float": ua.VariantType.Float, "int32": ua.VariantType.Int32,
            "uint32": ua.VariantType.UInt32, "string": ua.VariantType.String}[name]


def parse_value(kind, text):
    if kind in ("double", "float"):
        return float(text)
    if kind in ("int32", "uint32"):
        return int(text)
    return text


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--users", default="")
    ap.add_argument("--cert", default="")
    ap.add_argument("--secure", default="signandencrypt")
    ap.add_argument("--trust-clients", default="")
    ap.add_argument("--encrypted-passwords-only", action="store_true")
    ap.add_argument("--devices", type=int, default=0)
    ap.add_argument("--items", type=int, default=40)
    args = ap.parse_args()
    logging.basicConfig(level=logging.CRITICAL)

    users = dict(u.split(":", 1) for u in args.users.split(",") if u)
    server = Server(user_manager=PasswordUsers(users) if users else None)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/")
    if args.cert:
        modes = {"sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
                 "signandencrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity] + [modes[m] for m in args.secure.split(",") if m])
        await server.load_certificate(f"{args.cert}/cert.der")
        await server.load_private_key(f"{args.cert}/key.pem")
        if args.trust_clients:
            from pathlib import Path
            from asyncua.crypto.truststore import TrustStore
            from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
            store = TrustStore([Path(args.trust_clients)], [])
            await store.load()
            options = (CertificateValidatorOptions.EXT_VALIDATION | CertificateValidatorOptions.TRUSTED
                       | CertificateValidatorOptions.PEER_CLIENT)
            server.set_certificate_validator(CertificateValidator(options, store))
    else:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_security_IDs(["Username"] if users else ["Anonymous"])
    if args.encrypted_passwords_only:
        decrypt = server.iserver.decrypt_user_token

        def only_encrypted(isession, token):
            if not token.EncryptionAlgorithm:
                raise ua.UaError("password not encrypted")
            return decrypt(isession, token)

        server.iserver.decrypt_user_token = only_encrypted
    idx = await server.register_namespace(NS_URI)
    objects = server.nodes.objects

    crane = await objects.add_object(ua.NodeId("Crane01", idx), ua.QualifiedName("Crane01", idx))
    nodes = {}

    async def var(name, value, vtype, status=None):
        node = await crane.add_variable(ua.NodeId(f"Crane01.{name}", idx), ua.QualifiedName(name, idx), value, vtype)
        if status is not None:
            await node.write_value(ua.DataValue(ua.Variant(value, vtype), StatusCode=ua.StatusCode(status),
                                                SourceTimestamp=datetime.now(timezone.utc)))
        nodes[name] = node

    await var("PosX", 12.5, ua.VariantType.Double)
    await var("Load", 250.0, ua.VariantType.Float)
    await var("Mode", 1, ua.VariantType.Int32)
    await var("Name", "crane one", ua.VariantType.String)
    await var("Running", True, ua.VariantType.Boolean)
    await var("Counter", 7, ua.VariantType.UInt32)
    await var("Big", -9000000000, ua.VariantType.Int64)
    await var("Levels", [1.0, 2.5, 4.0], ua.VariantType.Double)
    await var("Stale", 3.0, ua.VariantType.Double, ua.StatusCodes.UncertainLastUsableValue)
    await var("Broken", 0.0, ua.VariantType.Double, ua.StatusCodes.BadSensorFailure)
    await var("Beat", 0, ua.VariantType.UInt32)
    # What `run` rewrites each cycle: name -> (kind, value, status).
    model = {"PosX": ("double", 12.5, ua.StatusCodes.Good), "Load": ("float", 250.0, ua.StatusCodes.Good),
             "Mode": ("int32", 1, ua.StatusCodes.Good)}
    runner = {"task": None, "beat": True, "count": 0}

    async def write(name, kind, value, status, source_ts, server_ts=None):
        await nodes[name].write_value(ua.DataValue(ua.Variant(value, variant_type(kind)), StatusCode=ua.StatusCode(status),
                                                   SourceTimestamp=source_ts, ServerTimestamp=server_ts))

    async def cycle(period):
        while True:
            now = datetime.now(timezone.utc)
            for name, (kind, value, status) in list(model.items()):
                await write(name, kind, value, status, now)
            if runner["beat"]:
                runner["count"] += 1
            await write("Beat", "uint32", runner["count"], ua.StatusCodes.Good, now)
            await asyncio.sleep(period)

    many = await objects.add_folder(ua.NodeId("Many", idx), ua.QualifiedName("Many", idx))
    items = []
    for i in range(args.items):
        items.append(await many.add_variable(ua.NodeId(f"Many.Item{i:02d}", idx), ua.QualifiedName(f"Item{i:02d}", idx), i, ua.VariantType.Int32))

    plant = []
    if args.devices:
        pf = await objects.add_folder(ua.NodeId("Plant", idx), ua.QualifiedName("Plant", idx))
        for d in range(args.devices):
            row = {}
            for name, value, vt in (("Mode", 1, ua.VariantType.Int32), ("PosX", 12.5, ua.VariantType.Double), ("Load", 2500.0, ua.VariantType.Float)):
                row[name] = [await pf.add_variable(ua.NodeId(f"Dev{d:03d}.{name}", idx), ua.QualifiedName(f"Dev{d:03d}.{name}", idx), value, vt), value, vt]
            plant.append(row)

    async def plant_cycle(period):
        while True:
            now = datetime.now(timezone.utc)
            for row in plant:
                for node, value, vt in row.values():
                    await node.write_value(ua.DataValue(ua.Variant(value, vt), SourceTimestamp=now))
            await asyncio.sleep(period)

    async def churn(period):
        n = 0
        while True:
            n += 1
            now = datetime.now(timezone.utc)
            for i, node in enumerate(items):
                await node.write_value(ua.DataValue(ua.Variant(i + n, ua.VariantType.Int32), SourceTimestamp=now))
            await asyncio.sleep(period)

    ids = await objects.add_folder(ua.NodeId("Ids", idx), ua.QualifiedName("Ids", idx))
    await ids.add_variable(ua.NodeId(5001, idx), ua.QualifiedName("Numeric", idx), 5001, ua.VariantType.Int32)
    await ids.add_variable(ua.NodeId(uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a"), idx), ua.QualifiedName("Guid", idx), 16, ua.VariantType.Int32)
    await ids.add_variable(ua.NodeId(b"\x01\x02\x03", idx), ua.QualifiedName("Opaque", idx), 3, ua.VariantType.Int32)

    async with server:
        print(f"READY {server.bserver.port}", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            parts = line.split()
            if not parts:
                continue
            cmd = parts[0]
            try:
                if cmd == "quit":
                    break
                elif cmd == "set":
                    name, kind, text = parts[1], parts[2], parts[3]
                    status = getattr(ua.StatusCodes, parts[4]) if len(parts) > 4 else ua.StatusCodes.Good
                    if name in model:
                        model[name] = (kind, parse_value(kind, text), status)
                    await write(name, kind, parse_value(kind, text), status, datetime.now(timezone.utc))
                elif cmd == "setmany":
                    now = datetime.now(timezone.utc)
                    for i in range(1, len(parts) - 2, 3):
                        name, kind, value = parts[i], parts[i + 1], parse_value(parts[i + 1], parts[i + 2])
                        if name in model:
                            model[name] = (kind, value, ua.StatusCodes.Good)
                        await write(name, kind, value, ua.StatusCodes.Good, now)
                elif cmd == "setat":
                    name, kind, text, age = parts[1], parts[2], parts[3], float(parts[4])
                    await write(name, kind, parse_value(kind, text), ua.StatusCodes.Good,
                                datetime.fromtimestamp(datetime.now(timezone.utc).timestamp() - age / 1000, timezone.utc))
                elif cmd == "setserver":
                    name, kind, text = parts[1], parts[2], parts[3]
                    await write(name, kind, parse_value(kind, text), ua.StatusCodes.Good, None, datetime.now(timezone.utc))
                elif cmd == "run":
                    if runner["task"] is None:
                        runner["task"] = asyncio.create_task(cycle(float(parts[1]) / 1000))
                elif cmd == "freeze":
                    if runner["task"] is not None:
                        runner["task"].cancel()
                        runner["task"] = None
                elif cmd == "beat":
                    runner["beat"] = parts[1] == "on"
                elif cmd == "plant":
                    runner["plant"] = asyncio.create_task(plant_cycle(float(parts[1]) / 1000))
                elif cmd == "churn":
                    runner["churn"] = asyncio.create_task(churn(float(parts[1]) / 1000))
                elif cmd == "dev":
                    row = plant[int(parts[1])]
                    row["Mode"][1] = int(parts[2])
                    t = time.monotonic_ns()
                    await row["Mode"][0].write_value(ua.DataValue(ua.Variant(int(parts[2]), ua.VariantType.Int32),
                                                                  SourceTimestamp=datetime.now(timezone.utc)))
                    print(f"ok {t}", flush=True)
                    continue
                elif cmd == "drop":
                    for transport in list(server.iserver.asyncio_transports):
                        transport.close()
                else:
                    print(f"error unknown command {cmd}", flush=True)
                    continue
                print("ok", flush=True)
            except Exception as e:  # a test's typo should say what went wrong, not hang
                print(f"error {e}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
