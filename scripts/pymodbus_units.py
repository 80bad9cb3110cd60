#!/usr/bin/env python3
"""Several Modbus units behind one link, on pymodbus 3.8.6: an outside peer for tibet-twin's
serial (RTU), gateway and RTU-over-TCP tests.

Usage: pymodbus_units.py SPEC_JSON
  SPEC_JSON: {"mode": "serial" | "gateway" | "rtu-tcp", "port": "/path/to/pty" (serial) or 0,
              "baud": 19200, "units": [1, 2, 3], "registers": 20,
              "input": {"0": 1234}, "holding": {...}}
  serial   a ModbusSerialServer (RTU framer) on the given device (one end of a socat pty pair);
  gateway  a ModbusTcpServer on 127.0.0.1 behind a front that accepts ONE client connection at
           a time (a second one is closed at once), like a cheap RS-485/TCP gateway;
  rtu-tcp  a ModbusTcpServer with the RTU framer (RTU frames with CRC on TCP).
  Every unit has the same tables of "registers" registers (and bits), zeros unless listed; a
  read past them draws exception 2 (illegal data address). Unit ids not listed never answer.

Prints "listening PORT_OR_DEVICE" once it serves. Then reads commands on stdin, answering "ok":
  dead UNIT          the unit stops answering (no reply at all, as on a bus)
  alive UNIT         it answers again
  set UNIT TABLE ADDRESS VALUE
  crc N              corrupt the CRC of the next N answers (serial and rtu-tcp)
  quit               exit
Exits when stdin closes. Answer counts per unit are printed with "count UNIT".

pymodbus 3.8 adds 1 to every address inside its datastore; setValues(fc, pdu_address, ...)
adds the same 1, so blocks are created at 0 and addresses are passed as on the wire.
"""
import asyncio
import json
import signal
import sys
import threading

from pymodbus import FramerType
from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

FC = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
corrupt = 0
answers = {}


def trace_packet(sending, data):
    """Counts answers per unit, and spoils the CRC of the next `corrupt` ones."""
    global corrupt
    if sending and data:
        answers[data[0]] = answers.get(data[0], 0) + 1
        if corrupt > 0 and len(data) > 2:
            corrupt -= 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
    return data


async def front(inner_port, unit_alive):
    """One client at a time; requests for dead units are swallowed (MBAP unit id, byte 6)."""
    busy = asyncio.Lock()

    async def handle(reader, writer):
        if busy.locked():
            writer.close()
            return
        async with busy:
            ir, iw = await asyncio.open_connection("127.0.0.1", inner_port)

            async def back():
                try:
                    while data := await ir.read(4096):
                        writer.write(data)
                        await writer.drain()
                except (ConnectionError, asyncio.CancelledError):
                    pass

            task = asyncio.create_task(back())
            buf = b""
            try:
                while data := await reader.read(4096):
                    buf += data
                    while len(buf) >= 7:
                        length = int.from_bytes(buf[4:6], "big")
                        if len(buf) < 6 + length:
                            break
                        frame, buf = buf[:6 + length], buf[6 + length:]
                        if unit_alive(frame[6]):
                            answers[frame[6]] = answers.get(frame[6], 0) + 1
                            iw.write(frame)
                            await iw.drain()
            except ConnectionError:
                pass
            task.cancel()
            iw.close()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server


async def main():
    global corrupt
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    spec = json.loads(sys.argv[1])
    mode = spec.get("mode", "serial")
    n = int(spec.get("registers", 20))
    units = [int(u) for u in spec.get("units", [1])]
    slaves = {}
    for u in units:
        s = ModbusSlaveContext(di=ModbusSequentialDataBlock(0, [0] * (n + 1)),
                               co=ModbusSequentialDataBlock(0, [0] * (n + 1)),
                               hr=ModbusSequentialDataBlock(0, [0] * (n + 1)),
                               ir=ModbusSequentialDataBlock(0, [0] * (n + 1)))
        for table, fc in FC.items():
            for addr, value in spec.get(table, {}).items():
                s.setValues(fc, int(addr), [int(value)])
        slaves[u] = s
    context = ModbusServerContext(slaves=dict(slaves), single=False)
    dead = set()

    def alive(unit):
        return unit in slaves and unit not in dead

    if mode == "serial":
        server = ModbusSerialServer(context, framer=FramerType.RTU, port=spec["port"],
                                    baudrate=int(spec.get("baud", 19200)), parity="N", bytesize=8,
                                    stopbits=1, ignore_missing_slaves=True, trace_packet=trace_packet)
        await server.serve_forever(background=True)
        where = spec["port"]
    else:
        framer = FramerType.RTU if mode == "rtu-tcp" else FramerType.SOCKET
        server = ModbusTcpServer(context, framer=framer, address=("127.0.0.1", 0),
                                 ignore_missing_slaves=True, trace_packet=trace_packet)
        await server.serve_forever(background=True)
        inner = server.transport.sockets[0].getsockname()[1]
        if mode == "gateway":
            fr = await front(inner, alive)
            where = str(fr.sockets[0].getsockname()[1])
        else:
            where = str(inner)
    print(f"listening {where}", flush=True)

    loop = asyncio.get_running_loop()
    done = asyncio.Event()

    def apply(line):
        global corrupt
        words = line.split()
        if not words:
            return
        if words[0] == "dead" and len(words) == 2:
            u = int(words[1])
            dead.add(u)
            context._slaves.pop(u, None)  # pylint: disable=protected-access
        elif words[0] == "alive" and len(words) == 2:
            u = int(words[1])
            dead.discard(u)
            if u in slaves:
                context._slaves[u] = slaves[u]  # pylint: disable=protected-access
        elif words[0] == "set" and len(words) == 5:
            slaves[int(words[1])].setValues(FC[words[2]], int(words[3]), [int(words[4])])
        elif words[0] == "crc" and len(words) == 2:
            corrupt = int(words[1])
        elif words[0] == "count" and len(words) == 2:
            print(f"count {answers.get(int(words[1]), 0)}", flush=True)
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
