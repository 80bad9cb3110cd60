#!/usr/bin/env python3
"""A PLC stand-in on pymodbus 3.8.6 for tibet-twin's tests: an outside Modbus/TCP peer.

Usage: pymodbus_plc.py PLC_JSON
  PLC_JSON: {"unit": 1, "sparse": false, "port": 0,
              "holding": {"0": 0, "100": 16712}, "input": {...}, "coil": {...}, "discrete": {...},
              "encode": [{"table": "holding", "address": 10, "type": "float32", "order": "CDAB",
                          "value": 1234.5}, ...]}
  Addresses are 0-based protocol addresses. "encode" lays values out with pymodbus' own encoder
  (ModbusClientMixin.convert_to_registers: big-endian bytes, word_order "little" for CDAB/DCBA;
  BADC/DCBA then swap the two bytes of every register; strings never reverse their words), a
  second opinion on tibet-twin's decoder. With "sparse": true only the listed addresses
  exist (anything else draws exception 2); otherwise each table is 0…10000, zeros unless listed.

Prints "listening 127.0.0.1:PORT" once it accepts connections (port 0 unless "port" is given,
e.g. to restart on the port a test read back). Then reads
commands on stdin, answering "ok" on stdout after each:
  set TABLE ADDRESS VALUE   set one register or bit
  delay MS                  answer every request MS milliseconds late (0: on time)
  quit                      exit
Exits when stdin closes.

pymodbus 3.8 adds 1 to every address inside its datastore; setValues(fc, pdu_address, ...)
adds the same 1, so blocks are created at 0 and addresses are passed as on the wire.
"""
import asyncio
import json
import signal
import sys
import threading
import time

from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.datastore import (ModbusSequentialDataBlock, ModbusServerContext,
                                ModbusSlaveContext, ModbusSparseDataBlock)
from pymodbus.server import ModbusTcpServer

FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
delay_s = 0.0


class SlowContext(ModbusSlaveContext):
    """Answers late while a delay is set (blocking the event loop, like a busy PLC)."""

    def getValues(self, fc_as_hex, address, count=1):
        # The values of the moment the request arrived, sent late: a late answer carries old data.
        values = super().getValues(fc_as_hex, address, count)
        if delay_s > 0:
            time.sleep(delay_s)
        return values


def encode(item):
    """The registers pymodbus' encoder makes of one value in one of the four orders."""
    order = item["order"]
    kind = item["type"]
    little = order in ("CDAB", "DCBA") and kind != "string"
    regs = ModbusClientMixin.convert_to_registers(
        item["value"], ModbusClientMixin.DATATYPE[kind.upper()],
        word_order="little" if little else "big")
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


def block(sparse):
    if sparse:
        return ModbusSparseDataBlock({})
    return ModbusSequentialDataBlock(0, [0] * 10002)


async def main():
    global delay_s
    # A parent may have blocked these (the mask is inherited): let SIGTERM/SIGINT work again.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    spec = json.loads(sys.argv[1])
    sparse = bool(spec.get("sparse", False))
    slave = SlowContext(di=block(sparse), co=block(sparse), hr=block(sparse), ir=block(sparse))
    for table, fc in FC.items():
        for addr, value in spec.get(table, {}).items():
            slave.setValues(fc, int(addr), [int(value)])
    for item in spec.get("encode", []):
        slave.setValues(FC[item["table"]], int(item["address"]), encode(item))
    context = ModbusServerContext(slaves={int(spec.get("unit", 1)): slave}, single=False)
    server = ModbusTcpServer(context, address=("127.0.0.1", int(spec.get("port", 0))))
    await server.serve_forever(background=True)
    port = server.transport.sockets[0].getsockname()[1]
    print(f"listening 127.0.0.1:{port}", flush=True)

    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def apply(line):
        global delay_s
        words = line.split()
        if not words:
            return
        if words[0] == "set" and len(words) == 4:
            slave.setValues(FC[words[1]], int(words[2]), [int(words[3])])
        elif words[0] == "delay" and len(words) == 2:
            delay_s = int(words[1]) / 1000.0
        elif words[0] == "quit":
            done.set()
            return
        else:
            print(f"error: {line}", file=sys.stderr, flush=True)
            return
        print("ok", flush=True)

    def reader():
        for line in sys.stdin:
            loop.call_soon_threadsafe(apply, line.strip())
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=reader, daemon=True).start()
    await done.wait()
    await server.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
