#!/usr/bin/env python3
"""Cache hit rates under the contact and group read paths.

Creates a tenant, --devices devices each with --contacts contacts, and --groups groups
of --members members; reads every device's contacts and sends to every group once (so
the figures are the steady state, not the cold start); then runs --ops operations from --threads threads, drawn as:

  reads   GET /v1/devices/{id}/contacts of a random device   (contacts read path)
  sends   POST /v1/devices/{id}/messages from a random member to its group (group
          read path: the
          group, then every member's address and device)
  writes  --write-share of the operations change what is cached: half add a contact
          (PUT contacts, an upsert: evicts that device's contacts), half add a group member
          (evicts the group in every layer and node)

and reads GET /admin/cache/stats before and after, printing each kind's hit rate over
the run per layer. Point it at a running server (see docs/benchmarks.md):

    python3 load-tests/cache-bench.py --base http://127.0.0.1:3919 --admin TOKEN
"""
import argparse
import json
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def must(answer, what):
    status, body = answer
    if status >= 300:
        raise SystemExit(f"{what}: {status} {body}")
    return body


def cache_counts(base, admin):
    stats = must(call(base, "GET", "/admin/cache/stats", admin), "cache stats")
    return {(c["kind"], c["layer"]): (c["hits"], c["misses"]) for c in stats["caches"]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="http://127.0.0.1:3000")
    p.add_argument("--admin", required=True)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--contacts", type=int, default=100)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--ops", type=int, default=5_000)
    p.add_argument("--write-share", type=float, default=0.02)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=300)
    args = p.parse_args()
    rng = random.Random(7)
    base, admin = args.base, args.admin

    key = must(call(base, "POST", "/admin/tenants", admin, {"name": "cache-bench"}),
               "tenant")["api_key"]
    devices = []
    for i in range(args.devices):
        address = "+1666%07d" % i
        d = must(call(base, "POST", "/v1/devices", key, {"address": address}), "device")
        devices.append((d["device_id"], address))
        contacts = [{"address": "+1777%07d" % (i * args.contacts + j)}
                    for j in range(args.contacts)]
        must(call(base, "PUT", f"/v1/devices/{d['device_id']}/contacts", key,
                  {"contacts": contacts}), "contacts")
    groups = []  # (group id, device ids of its members: the possible senders)
    for g in range(args.groups):
        chosen = rng.sample(devices, args.members)
        body = must(call(base, "POST", "/v1/groups", key,
                         {"name": f"g{g}", "members": [a for _, a in chosen]}), "group")
        groups.append((body["group_id"], [d for d, _ in chosen]))
    print(f"set up {len(devices)} devices x {args.contacts} contacts, "
          f"{len(groups)} groups x {args.members} members")

    # Steady state: every key read once before counting (a cold start misses each
    # key once, whatever the cache).
    for dev, _ in devices:
        must(call(base, "GET", f"/v1/devices/{dev}/contacts", key), "warm contacts")
    for gid, senders in groups:
        must(call(base, "POST", f"/v1/devices/{senders[0]}/messages", key,
                  {"group": gid, "body": {"text": "warm"}}), "warm group")

    before = cache_counts(base, admin)
    deadline = time.time() + args.max_seconds
    lock = threading.Lock()
    done = {"reads": 0, "sends": 0, "contact writes": 0, "member adds": 0, "errors": 0}
    errors = {}
    extra = [0]

    def one(n):
        if time.time() > deadline:
            return
        r = random.Random(n)
        x = r.random()
        dev, _ = r.choice(devices)
        if x < args.write_share / 2:
            with lock:
                extra[0] += 1
                new = "+1999%07d" % extra[0]
            kind = "contact writes"
            answer = call(base, "PUT", f"/v1/devices/{dev}/contacts", key,
                          {"contacts": [{"address": new}]})
        elif x < args.write_share:
            _, member = r.choice(devices)
            kind = "member adds"
            gid, _ = r.choice(groups)
            answer = call(base, "POST", f"/v1/groups/{gid}/members", key,
                          {"members": [member]})
        elif x < args.write_share + (1 - args.write_share) / 2:
            kind = "reads"
            answer = call(base, "GET", f"/v1/devices/{dev}/contacts", key)
        else:
            kind = "sends"
            gid, senders = r.choice(groups)
            answer = call(base, "POST", f"/v1/devices/{r.choice(senders)}/messages", key,
                          {"group": gid, "body": {"text": "hi"}})
        with lock:
            if answer[0] < 300:
                done[kind] += 1
            else:
                done["errors"] += 1
                code = (answer[1] or {}).get("error", {}).get("code", answer[0])
                errors[f"{kind}: {code}"] = errors.get(f"{kind}: {code}", 0) + 1

    t0 = time.time()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(one, range(args.ops)))
    secs = time.time() - t0
    after = cache_counts(base, admin)
    print(f"{sum(done.values())} operations in {secs:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in done.items()))
    if errors:
        print("errors: " + ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())))
    print(f"{'kind':<14} {'layer':<7} {'hits':>8} {'misses':>8} {'hit rate':>9}")
    for (kind, layer), (h, m) in sorted(after.items()):
        h0, m0 = before.get((kind, layer), (0, 0))
        dh, dm = h - h0, m - m0
        if dh + dm == 0:
            continue
        print(f"{kind:<14} {layer:<7} {dh:>8} {dm:>8} {dh / (dh + dm):>8.1%}")


if __name__ == "__main__":
    main()
