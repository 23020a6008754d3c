#!/usr/bin/env python3
"""Queue benchmark: time to 202 for 100,000 queued messages in one call, and drain rate
across many devices with the rate limits raised.

Starts nothing: point it at a running server (see docs/benchmarks.md for the command).

    python3 load-tests/queue-bench.py --base http://127.0.0.1:3000 --admin TOKEN \
        --devices 1000 --per-device 100
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
        text = res.read()
        return res.status, (json.loads(text) if text else None)


def stats(args):
    return call(args.base, "GET", "/admin/queues/stats", args.admin)[1]


def wait_drained(args, total_before, n, started):
    last = None
    while True:
        s = stats(args)
        done = s["completed"] + s["failed"] - total_before
        if done != last:
            last = done
        if done >= n:
            return time.time() - started, s
        time.sleep(args.poll)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", default="http://127.0.0.1:3000")
    p.add_argument("--admin", required=True)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--per-device", type=int, default=100)
    p.add_argument("--campaign", type=int, default=100_000)
    p.add_argument("--poll", type=float, default=0.5, help="stats poll period (s)")
    args = p.parse_args()

    _, t = call(args.base, "POST", "/admin/tenants", args.admin, {"name": "queue-bench"})
    key = t["api_key"]
    devices = []
    t0 = time.time()
    for i in range(args.devices):
        _, d = call(args.base, "POST", "/v1/devices", key,
                    {"address": "+1888%07d" % i, "name": "bench %d" % i})
        devices.append(d)
    print(f"created {len(devices)} devices in {time.time() - t0:.1f} s")

    # 1. One call, 100,000 messages (campaign form: one device, 100,000 recipients).
    to = [devices[i % len(devices)]["address"] for i in range(args.campaign)]
    body = {"device": devices[0]["device_id"], "to": to, "body": {"text": "campaign"},
            "priority": "low", "send_at": int(time.time() * 1000) + 3_600_000}
    payload = json.dumps(body).encode()
    req = urllib.request.Request(args.base + "/v1/messages/bulk", data=payload, method="POST")
    req.add_header("Authorization", "Bearer " + key)
    req.add_header("Content-Type", "application/json")
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=600) as res:
        status = res.status
        ids = json.loads(res.read())["job_ids"]
    enqueue_s = time.time() - t0
    print(f"enqueue: {len(ids)} jobs in one call ({len(payload) / 1e6:.1f} MB) -> {status} "
          f"in {enqueue_s * 1000:.0f} ms (scheduled an hour ahead, so they stay queued)")

    # 2. Drain: every device sends per_device messages to the next device.
    n = args.devices * args.per_device
    msgs = []
    for r in range(args.per_device):
        for i, d in enumerate(devices):
            nxt = devices[(i + 1) % len(devices)]
            msgs.append({"device": d["device_id"], "to": nxt["address"],
                         "body": {"r": r}, "priority": "normal"})
    before = stats(args)
    total_before = before["completed"] + before["failed"]
    started = time.time()
    enq = 0.0
    for k in range(0, n, 10_000):
        t1 = time.time()
        st, _ = call(args.base, "POST", "/v1/messages/bulk", key, {"messages": msgs[k:k + 10_000]})
        assert st == 202, st
        enq += time.time() - t1
    elapsed, s = wait_drained(args, total_before, n, started)
    print(f"drain: {n} queued messages from {args.devices} devices, enqueued in "
          f"{n // 10_000} calls ({enq:.2f} s), all completed after {elapsed:.2f} s -> "
          f"{n / elapsed:,.0f} msg/s end to end; failed {s['failed']}")


if __name__ == "__main__":
    main()
