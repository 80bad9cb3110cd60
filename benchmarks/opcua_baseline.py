#!/usr/bin/env python3
"""Baselines for OPCUABench, run by it in the same run: the asyncua 2.1.0 client.

Usage:
  opcua_baseline.py read ENDPOINT NODE COUNT   read NODE's value COUNT times, one request at a
                                               time; prints "p50_us p99_us"
  opcua_baseline.py decode FILE ROUNDS         decode FILE (an Int32 count and that many
                                               DataValues) ROUNDS times; prints "ns_per_value"
"""
import asyncio
import sys
import time
from typing import List

from asyncua import Client, ua
from asyncua.common.utils import Buffer
from asyncua.ua.ua_binary import from_binary


async def read(endpoint, node_text, count):
    async with Client(endpoint) as client:
        node = client.get_node(node_text)
        await node.read_data_value()
        samples = []
        for _ in range(count):
            t0 = time.perf_counter_ns()
            await node.read_data_value()
            samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    print(f"{samples[len(samples) // 2] / 1000:.1f} {samples[int(len(samples) * 0.99)] / 1000:.1f}")


def decode(path, rounds):
    data = open(path, "rb").read()
    values = from_binary(List[ua.DataValue], Buffer(data))
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        from_binary(List[ua.DataValue], Buffer(data))
        dt = time.perf_counter_ns() - t0
        best = dt if best is None else min(best, dt)
    print(f"{best / len(values):.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "read":
        asyncio.run(read(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        decode(sys.argv[2], int(sys.argv[3]))
