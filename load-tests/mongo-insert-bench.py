#!/usr/bin/env python3
"""The MongoDB server's own insert rate, without Switchboard: 10 unordered
insert_many of 460 small documents into a collection with the inbox's three indexes,
with w:1 and with w:majority + j:true (Switchboard's default). Needs pymongo (the
virtualenv scripts/services makes has it):

    target/test-services/venv/bin/python load-tests/mongo-insert-bench.py mongodb://127.0.0.1:27017/
"""
import sys
import time

from pymongo import MongoClient, WriteConcern


def main():
    client = MongoClient(sys.argv[1] if len(sys.argv) > 1 else "mongodb://127.0.0.1:27017/")
    db = client["insert_bench"]
    db.rows.drop()
    db.rows.create_index([("d", 1), ("s", 1)], unique=True)
    db.rows.create_index([("m", 1)])
    db.rows.create_index([("d", 1), ("k", 1), ("ts", 1)])
    for wc in (WriteConcern(w=1), WriteConcern(w="majority", j=True)):
        rows = db.get_collection("rows", write_concern=wc)
        started, n = time.time(), 0
        for b in range(10):
            docs = [{"d": "dev%d" % (i % 1000), "s": b * 1000 + i, "m": "m%d_%d" % (b, i),
                     "k": 0, "ts": i, "body": "x" * 64} for i in range(460)]
            rows.insert_many(docs, ordered=False)
            n += len(docs)
        secs = time.time() - started
        print(f"{wc.document}: {n} docs in {secs:.2f} s = {n / secs:,.0f} docs/s")
        rows.delete_many({})
    client.drop_database("insert_bench")


if __name__ == "__main__":
    main()
