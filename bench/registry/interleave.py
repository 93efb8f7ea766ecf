#!/usr/bin/env python3
"""Times two commands in alternating order (A B, B A, A B, ...) so that load
from other processes on a shared machine hits both alike.

  interleave.py ROUNDS NAME_A PREP_A CMD_A NAME_B PREP_B CMD_B

PREP_* run untimed before each timed run ("" for none). Prints one line per
command (median, min, max seconds) and the median of the per-round ratios A/B.
"""
import statistics
import subprocess
import sys
import time

rounds = int(sys.argv[1])
a = sys.argv[2:5]
b = sys.argv[5:8]


def timed(prep, cmd):
    if prep:
        subprocess.run(prep, shell=True, check=True, stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


times = {a[0]: [], b[0]: []}
ratios = []
for i in range(rounds):
    order = (a, b) if i % 2 == 0 else (b, a)
    got = {}
    for name, prep, cmd in order:
        got[name] = timed(prep, cmd)
        times[name].append(got[name])
    ratios.append(got[a[0]] / got[b[0]])
for name, t in times.items():
    print(f"{name:13} median {statistics.median(t):.3f} s  min {min(t):.3f}  max {max(t):.3f}  ({len(t)} runs)")
print(f"ratio {a[0]}/{b[0]}: median {statistics.median(ratios):.2f} (per-round ratios {', '.join(f'{r:.2f}' for r in ratios)})")
