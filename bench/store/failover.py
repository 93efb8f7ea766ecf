"""Time from kill -9 of pier's raft leader to the next acknowledged write.

Called by run.sh with a running 3-server cluster (http ports base+1..3,
raft ports base+11..13, data dirs WORK/pier3-i). Each try: find the leader,
SIGKILL it, write in a tight loop to the survivors until one acknowledges,
restart the killed server and let it catch up.
"""
import json, os, signal, statistics, subprocess, sys, time, urllib.request

pier, work, base, tries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=1) as r:
        return json.load(r)

def put(port, key):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/kv/{key}", data=b"x", method="PUT")
    with urllib.request.urlopen(req, timeout=2) as r:
        return json.load(r)["written"]

def start(i):
    join = ",".join(f"127.0.0.1:{base + 10 + j}" for j in (1, 2, 3))
    log = open(f"{work}/pier3-{i}.log", "a")
    p = subprocess.Popen([pier, "server", "--insecure", "--data-dir", f"{work}/pier3-{i}", "--node-name", f"s{i}",
                          "--bind", "127.0.0.1", "--raft-port", str(base + 10 + i), "--http-port", str(base + i),
                          "--bootstrap-expect", "3", "--join", join], stdout=log, stderr=log)
    with open(f"{work}/pier3-{i}.pid", "w") as f:
        f.write(str(p.pid))
    return p

def pid_of(i):
    return int(open(f"{work}/pier3-{i}.pid").read())

times = []
for t in range(tries):
    leader = None
    deadline = time.monotonic() + 30
    while leader is None:
        for i in (1, 2, 3):
            try:
                if status(base + i)["is_leader"]:
                    leader = i
                    break
            except Exception:
                pass
        if time.monotonic() > deadline:
            print("no leader within 30 s"); sys.exit(1)
        time.sleep(0.05)
    for _ in range(100):
        try:
            if put(base + leader, f"failover/warm/{t}"):
                break
        except Exception:
            time.sleep(0.05)
    survivors = [i for i in (1, 2, 3) if i != leader]
    os.kill(pid_of(leader), signal.SIGKILL)
    killed_at = time.monotonic()
    done = None
    n = 0
    while done is None:
        for i in survivors:
            n += 1
            try:
                if put(base + i, f"failover/{t}/{n}"):
                    done = time.monotonic() - killed_at
                    break
            except Exception:
                pass
        if time.monotonic() - killed_at > 30:
            print(f"try {t}: no write acknowledged within 30 s"); sys.exit(1)
    times.append(done)
    print(f"try {t + 1}: leader s{leader} killed, next write acknowledged after {done * 1000:.0f} ms")
    start(leader)
    time.sleep(1.5)
print(f"failover: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {tries} tries")
