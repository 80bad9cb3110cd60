#!/usr/bin/env python3
"""Baselines for OPCUABench, run by it in the same run: the asyncua 2.1.0 client.

Usage:
  opcua_baseline.py read ENDPOINT NODE COUNT   read NODE's value COUNT times, one request at a
                                               time; prints "p50_us p99_us"
  opcua_baseline.py watch ENDPOINT DEVICES SAMPLING_MS PUBLISHING_MS
                                               subscribe to ns=2;s=DevNNN.Mode of DEVICES devices;
                                               print "READY", then "chg DEVICE VALUE MONOTONIC_NS"
                                               on each change of value (until stdin closes)
  opcua_baseline.py count ENDPOINT ITEMS SAMPLING_MS SECONDS
                                               subscribe to ns=2;s=Many.ItemNN of ITEMS items;
                                               print "notifications cpu_ns" received in SECONDS
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


class Changes:
    def __init__(self, names):
        self.names = names
        self.last = {}

    def datachange_notification(self, node, val, data):
        t = time.monotonic_ns()
        key = node.nodeid.Identifier
        if self.last.get(key) != val:
            self.last[key] = val
            print(f"chg {self.names.get(key, key)} {val} {t}", flush=True)


async def watch(endpoint, devices, sampling, publishing):
    async with Client(endpoint) as client:
        names = {f"Dev{d:03d}.Mode": d for d in range(devices)}
        sub = await client.create_subscription(publishing, Changes(names))
        await sub.subscribe_data_change([client.get_node(f"ns=2;s=Dev{d:03d}.Mode") for d in range(devices)],
                                        sampling_interval=sampling)
        print("READY", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            pass


class Counter:
    def __init__(self):
        self.n = 0

    def datachange_notification(self, node, val, data):
        self.n += 1


async def count(endpoint, items, sampling, seconds):
    async with Client(endpoint) as client:
        c = Counter()
        sub = await client.create_subscription(sampling, c)
        await sub.subscribe_data_change([client.get_node(f"ns=2;s=Many.Item{i:02d}") for i in range(items)],
                                        sampling_interval=sampling)
        await asyncio.sleep(1)
        n0, cpu0 = c.n, time.process_time_ns()
        await asyncio.sleep(seconds)
        print(f"{c.n - n0} {time.process_time_ns() - cpu0}", flush=True)


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
    elif sys.argv[1] == "watch":
        asyncio.run(watch(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))
    elif sys.argv[1] == "count":
        asyncio.run(count(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])))
    else:
        decode(sys.argv[2], int(sys.argv[3]))
