"""Drives elb's admin API the way ERU ELB's Python client (elb.py) does:
a requests.Session, `json=` bodies, a 2 s timeout, status 200 required and
a JSON reply. Path rules carry no `regex` key, exactly as that client
writes them, so they are plain prefix matches. Exits non-zero on the first
difference. Usage: eru_client_compat.py HOST:PORT BACKEND1 BACKEND2
"""
import sys

import requests

base, backend1, backend2 = "http://" + sys.argv[1], sys.argv[2], sys.argv[3]
session = requests.Session()


def call(method, endpoint, body=None):
    resp = session.request(method, url=base + "/__erulb__/" + endpoint, json=body, timeout=2)
    if resp.status_code != 200:
        raise SystemExit(f"{method} {endpoint}: {resp.status_code} {resp.content!r}")
    return resp.json()


def expect(got, want, what):
    if got != want:
        raise SystemExit(f"{what}: got {got!r}, want {want!r}")


# get_upstream on an empty balancer
expect(call("GET", "upstream"), {}, "empty upstream list")
# set_upstream: UpStream(name, servers).dump() == {name: servers}
expect(call("PUT", "upstream", {"up1": {backend1: ""}}), {"msg": "OK"}, "set up1")
expect(call("PUT", "upstream", {"up2": {backend2: "max_fails=2 weight=10"}}), {"msg": "OK"}, "set up2")
ups = call("GET", "upstream")
expect(sorted(ups), ["up1", "up2"], "upstream names")
expect(ups["up2"], [{"name": backend2, "addr": backend2, "weight": 10, "max_fails": 2, "fail_timeout": 10}], "up2")
expect(ups["up1"][0]["weight"], 1, "default weight")

# set_domain_rules(domain, RuleSet(...)) as the client dumps it
ruleset = {
    "init": "ua",
    "rules": {
        "ua": {"type": "ua", "args": {"succ": "path", "fail": "b2", "pattern": "httpie(\\S+)$"}},
        "path": {"type": "path", "args": {"succ": "b1", "fail": "b2", "pattern": "/blog"}},
        "b1": {"type": "backend", "args": {"servername": "up1"}},
        "b2": {"type": "backend", "args": {"servername": "up2"}},
    },
}
expect(call("PUT", "domain", {"compat.example": ruleset}), {"msg": "OK"}, "set domain")
expect(call("GET", "domain"), {"compat.example": ruleset}, "get_domain_rules")

# traffic follows the client's rules
def served_by(path, ua):
    resp = requests.get(base + path, headers={"Host": "compat.example", "User-Agent": ua}, timeout=2)
    if resp.status_code != 200:
        raise SystemExit(f"GET {path}: {resp.status_code}")
    return resp.json()["server"]

expect(served_by("/blog/post", "HTTPie/1.0"), "b1", "httpie on /blog")
expect(served_by("/about", "HTTPie/1.0"), "b2", "httpie elsewhere")
expect(served_by("/blog/post", "curl/8"), "b2", "curl")

# dump_to_etcd: PUT without a body
expect(call("PUT", "dump"), {"msg": "OK"}, "dump")

# delete_domain_rules / delete_upstream
expect(call("DELETE", "domain", ["compat.example"]), {"msg": "OK"}, "delete domain")
expect(call("GET", "domain"), {}, "domains after delete")
expect(call("DELETE", "upstream", ["up1", "nope"]), {"up1": True, "nope": False}, "delete upstream")
expect(sorted(call("GET", "upstream")), ["up2"], "upstreams after delete")
print("eru client compatibility: OK")
