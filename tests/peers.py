"""Producer and consumer processes for the fault-injection tests.

    python peers.py producer DIR AGENT STOPFILE OUT
    python peers.py consumer DIR AGENT OUT [reliable]

Both use nothing but the public API and write what they saw as JSON to OUT.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import redis

from tinytownd import Message, Town

SENDER = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b"


def produce(directory: str, agent: str, stop_file: str, out: str) -> None:
    channel = Town.connect(directory, start=False).channel()
    acked, failed, seq = [], [], 0
    while not Path(stop_file).exists():
        try:
            channel.send(Message.custom(SENDER, agent, "seq", str(seq)))
            acked.append(seq)
        except redis.RedisError:
            failed.append(seq)  # not acknowledged: may or may not have been queued
        seq += 1
    while True:
        try:
            channel.send(Message.custom(SENDER, agent, "done", ""))
            break
        except redis.RedisError:
            time.sleep(0.1)
    Path(out).write_text(json.dumps({"acked": acked, "failed": failed}))


def consume(directory: str, agent: str, out: str, mode: str = "") -> None:
    channel = Town.connect(directory, start=False).channel(reliable=mode == "reliable")
    received: list[int] = []
    errors, longest, quiet_since = 0, 0.0, time.monotonic()
    while time.monotonic() - quiet_since < 60:
        started = time.monotonic()
        try:
            message = channel.receive(agent, timeout=1.0)
        except redis.RedisError:
            errors += 1
            message = None
        longest = max(longest, time.monotonic() - started)
        if message is None:
            continue
        quiet_since = time.monotonic()
        if message.body["kind"] == "done":
            break
        received.append(int(message.body["payload"]))
    Path(out).write_text(
        json.dumps({"received": received, "errors": errors, "longest_receive": longest})
    )


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    produce(*args) if role == "producer" else consume(*args)
