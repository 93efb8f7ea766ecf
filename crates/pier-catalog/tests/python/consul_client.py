"""Drives pier's Consul-compatible API with py-consul (a real Consul client from PyPI).

Usage: consul_client.py HOST PORT HEALTH_URL
Prints OK and exits 0 when every step behaved as Consul would; raises otherwise.
"""
import sys
import threading
import time

import consul

host, port, health_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = consul.Consul(host=host, port=port)


def wait_for(what, fn, timeout=15.0):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# Register a service with an HTTP check; py-consul sends lower-case keys.
assert c.agent.service.register(
    "pyweb",
    service_id="pyweb-1",
    address="127.0.0.1",
    port=1234,
    tags=["py", "v1"],
    meta={"lang": "python"},
    check=consul.Check.http(health_url, interval="200ms", timeout="1s"),
)
services = c.agent.services()
assert services["pyweb-1"]["Service"] == "pyweb", services

# Read it back through health with `passing` once the check has run.
def passing():
    index, nodes = c.health.service("pyweb", passing=True)
    return nodes if len(nodes) == 1 else None


nodes = wait_for("pyweb passing", passing)
svc = nodes[0]["Service"]
assert svc["ID"] == "pyweb-1" and svc["Port"] == 1234 and svc["Meta"] == {"lang": "python"}, svc
assert sorted(svc["Tags"]) == ["py", "v1"], svc
checks = {ch["CheckID"]: ch for ch in nodes[0]["Checks"]}
assert checks["service:pyweb-1"]["Status"] == "passing", checks
index, tagged = c.health.service("pyweb", tag="v1", passing=True)
assert len(tagged) == 1
index, catalog_nodes = c.catalog.service("pyweb")
assert catalog_nodes[0]["ServicePort"] == 1234, catalog_nodes

# KV: put/get, cas, recurse, keys.
assert c.kv.put("py/a", "1")
index, v = c.kv.get("py/a")
assert v["Value"] == b"1", v
mi = v["ModifyIndex"]
assert c.kv.put("py/a", "2", cas=mi + 1000) is False
assert c.kv.put("py/a", "2", cas=mi) is True
assert c.kv.put("py/new", "x", cas=0) is True
assert c.kv.put("py/new", "y", cas=0) is False
assert c.kv.put("py/dir/b", "3", flags=7)
index, items = c.kv.get("py/", recurse=True)
assert [i["Key"] for i in items] == ["py/a", "py/dir/b", "py/new"], items
assert [i for i in items if i["Key"] == "py/dir/b"][0]["Flags"] == 7
index, keys = c.kv.get("py/", keys=True, separator="/")
assert keys == ["py/a", "py/dir/", "py/new"], keys
index, missing = c.kv.get("py/none")
assert missing is None and int(index) > 0

# A blocking query returns when the key changes (and not before).
index, v = c.kv.get("py/a")
other = consul.Consul(host=host, port=port)


def writer():
    time.sleep(0.7)
    other.kv.put("py/a", "changed")


threading.Thread(target=writer).start()
t0 = time.time()
new_index, v2 = c.kv.get("py/a", index=index, wait="20s")
elapsed = time.time() - t0
assert v2["Value"] == b"changed", v2
assert int(new_index) > int(index)
assert 0.5 < elapsed < 10, elapsed

# Deletes and deregistration.
assert c.kv.delete("py/", recurse=True)
index, gone = c.kv.get("py/", recurse=True)
assert gone is None
assert c.agent.service.deregister("pyweb-1")
index, nodes = c.health.service("pyweb")
assert nodes == [], nodes
print("OK")
