#!/usr/bin/env python3
"""Times commands in rotating order (A B C, B C A, C A B, ...) so that load
from other processes on a shared machine hits all alike.

  interleave.py ROUNDS NAME PREP CMD [NAME PREP CMD ...]

PREP runs untimed before each timed run ("" for none). Prints one line per
command (median, min, max seconds, and the median CPU seconds the command
itself used, user+sys of its process tree), then for every command but the
last the median of the per-round ratios to the last one (the last line is
the first command's ratio).

SERVER_PIDS="NAME=PIDFILE ..." (optional): also report the median CPU time
the server of NAME spent during that command (from /proc/PID/stat; the pid
file is read after PREP, which may restart the server).
"""
import os
import resource
import statistics
import subprocess
import sys
import time

rounds = int(sys.argv[1])
items = [sys.argv[i:i + 3] for i in range(2, len(sys.argv), 3)]
if len(items) < 2 or any(len(it) != 3 for it in items):
    sys.exit(__doc__)
pidfiles = dict(kv.split("=", 1) for kv in os.environ.get("SERVER_PIDS", "").split())
ticks = os.sysconf("SC_CLK_TCK")


def server_cpu(name):
    """CPU seconds used so far by the server behind NAME, or None."""
    try:
        with open(pidfiles[name]) as f:
            pid = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks
    except (KeyError, OSError, ValueError, IndexError):
        return None


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(name, prep, cmd):
    if prep:
        subprocess.run(prep, shell=True, check=True, stdout=subprocess.DEVNULL)
    s0, c0 = server_cpu(name), children_cpu()
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    s1, c1 = server_cpu(name), children_cpu()
    server = s1 - s0 if s0 is not None and s1 is not None else None
    return wall, c1 - c0, server


names = [it[0] for it in items]
walls = {n: [] for n in names}
client = {n: [] for n in names}
server = {n: [] for n in names}
ratios = {n: [] for n in names[:-1]}
for i in range(rounds):
    k = i % len(items)
    got = {}
    for name, prep, cmd in items[k:] + items[:k]:
        wall, cpu, srv = timed(name, prep, cmd)
        got[name] = wall
        walls[name].append(wall)
        client[name].append(cpu)
        if srv is not None:
            server[name].append(srv)
    for n in ratios:
        ratios[n].append(got[n] / got[names[-1]])
for n in names:
    t = walls[n]
    line = (f"{n:13} median {statistics.median(t):.3f} s  min {min(t):.3f}  max {max(t):.3f}  "
            f"({len(t)} runs; client CPU {statistics.median(client[n]):.2f} s")
    if server[n]:
        line += f", server CPU {statistics.median(server[n]):.2f} s"
    print(line + ")")
for n in reversed(names[:-1]):
    print(f"ratio {n}/{names[-1]}: median {statistics.median(ratios[n]):.2f} "
          f"(per-round ratios {', '.join(f'{r:.2f}' for r in ratios[n])})")
