#!/usr/bin/env python3
"""A client nobody here wrote (nats-py) following docs/wire-format.md's NATS section, driven by
tests/nats/nats_foreign_client_test.cc against a real nats-server.

  foreign_client.py publish URL SUBJECT   publishes the event the C++ test expects, via
                                          JetStream (waits for the PubAck); prints the PubAck
  foreign_client.py read URL STREAM SUBJECT
                                          reads the oldest message of SUBJECT with a durable
                                          pull consumer of its own, acks it and prints its
                                          headers and payload as JSON

nats-py comes from PyPI into the venv that scripts/install-deps.sh makes.
"""

import asyncio
import base64
import json
import sys

import nats

# Exactly the headers the docs list for one event, as a user would write them.
EVENT_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "py-order-7",
    "ce-source": "/nats-py",
    "ce-type": "com.example.order",
    "ce-subject": "order/7",
    "ce-time": "2024-05-01T14:00:00.125+02:00",
    "Content-Type": "application/json",
    "ce-dataschema": "https://example.com/order.json",
    "ce-partitionkey": "customer-3",
    "ce-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "ce-tenant": "acme",
    "Nats-Msg-Id": "py-order-7",
}
EVENT_DATA = b'{"order":7,"items":["a","b"]}'


async def publish(url, subject):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        ack = await js.publish(subject, EVENT_DATA, headers=EVENT_HEADERS, timeout=10)
        print(json.dumps({"stream": ack.stream, "seq": ack.seq}))
    finally:
        await nc.close()


async def read(url, stream, subject):
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, durable="foreign-reader", stream=stream)
        msgs = await sub.fetch(1, timeout=10)
        msg = msgs[0]
        await msg.ack_sync()
        print(json.dumps({
            "subject": msg.subject,
            "headers": dict(msg.headers or {}),
            "data_base64": base64.b64encode(msg.data).decode(),
        }))
    finally:
        await nc.close()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "publish":
        asyncio.run(publish(sys.argv[2], sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == "read":
        asyncio.run(read(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
