#!/usr/bin/env python3
"""GET latency of one path on two servers, requests alternating between them,
one keep-alive connection each. Usage: get_latency.py N PATH NAME=HOST:PORT NAME=HOST:PORT"""
import http.client
import statistics
import sys
import time

n, path = int(sys.argv[1]), sys.argv[2]
servers = [arg.split("=", 1) for arg in sys.argv[3:]]
conns = {name: http.client.HTTPConnection(addr, timeout=60) for name, addr in servers}
lat = {name: [] for name, _ in servers}
size = {}
for i in range(n + 5):
    for name, _ in (servers if i % 2 == 0 else list(reversed(servers))):
        c = conns[name]
        start = time.perf_counter()
        c.request("GET", path)
        resp = c.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - start
        assert resp.status == 200, (name, resp.status)
        size[name] = len(body)
        if i >= 5:  # warm-up
            lat[name].append(elapsed * 1000)
for name, values in lat.items():
    values.sort()
    p99 = values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
    print(f"{name:13} p50 {statistics.median(values):7.2f} ms  p99 {p99:7.2f} ms  mean {statistics.mean(values):7.2f} ms  ({len(values)} requests, {size[name]} bytes)")
