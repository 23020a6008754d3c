#!/usr/bin/env python3
"""Contact sync as a background job: PUT N contacts (?async) and time until the job
completes. Point it at a running server (see docs/benchmarks.md).

    python3 load-tests/contacts-bench.py --base http://127.0.0.1:3918 --admin TOKEN -n 200000
"""
import argparse
import json
import time
import urllib.request


def call(base, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as res:
        return json.loads(res.read() or b"null")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="http://127.0.0.1:3000")
    p.add_argument("--admin", required=True)
    p.add_argument("-n", type=int, default=200_000)
    args = p.parse_args()
    key = call(args.base, "POST", "/admin/tenants", args.admin, {"name": "contacts-bench"})["api_key"]
    dev = call(args.base, "POST", "/v1/devices", key, {"address": "+15550000001"})["device_id"]
    contacts = [{"address": "+1888%07d" % i} for i in range(args.n)]
    t0 = time.time()
    job = call(args.base, "PUT", f"/v1/devices/{dev}/contacts?async=true", key,
               {"contacts": contacts})["job_id"]
    t1 = time.time()
    while True:
        view = call(args.base, "GET", f"/v1/jobs/{job}", key)
        if view["state"] in ("completed", "failed"):
            break
        time.sleep(0.02)
    t2 = time.time()
    print(f"{args.n} contacts: 202 after {t1 - t0:.2f} s, job {view['state']} after "
          f"{t2 - t0:.2f} s -> {args.n / (t2 - t0) * 60:,.0f} contacts/min end to end "
          f"({args.n / (t2 - t1) * 60:,.0f}/min in the job); progress {view['progress']}")


if __name__ == "__main__":
    main()
