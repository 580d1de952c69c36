"""The hot path's own packing gives the bytes redis-py would send (no Redis needed)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tinytownd import resp

COMMANDS: list[tuple[Any, ...]] = [
    ("LPOP", "tt:t:inbox:9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"),
    ("LMPOP", 2, "tt:t:urgent:a", "tt:t:inbox:a", "LEFT"),
    ("BLPOP", "tt:t:urgent:a", "tt:t:inbox:a", "0.998"),
    ("RPUSH", "k", '{"description":"café ☕ 𝄞","priority":"normal"}'),
    ("RPUSH", "k", "x" * 70_000),  # past redis-py's chunking cutoff
    ("LREM", "p", -1, b"\x00\xff raw bytes"),
    ("HSET", "k", "", b"", "n", 0),
    ("EVALSHA", "0" * 40, 3, "a", "b", "c"),
]


def redis_py_packs(command: tuple[Any, ...]) -> bytes:
    return b"".join(redis.Connection().pack_command(*command))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_each_command_packs_to_the_bytes_redis_py_sends(command: tuple[Any, ...]) -> None:
    expected = redis_py_packs(command)
    assert resp.pack(command) == expected
    assert resp._pack_in_python(command) == expected  # without tinytownd[fast]


def test_several_commands_go_out_back_to_back() -> None:
    packed = resp.request(COMMANDS, {})
    assert packed == b"".join(redis_py_packs(command) for command in COMMANDS)


def test_a_pool_that_encodes_otherwise_or_an_odd_argument_is_left_to_redis_py() -> None:
    assert resp.request([("GET", "k")], {"encoding": "latin-1"}) is None
    assert resp.request([("GET", "k")], {"encoding_errors": "replace"}) is None
    assert resp.request([("GET", ["k"])], {}) is None  # redis-py says what is wrong
    assert resp.request([("GET", "k")], {"encoding": "utf-8"}) == redis_py_packs(("GET", "k"))


def test_text_that_is_not_text_fails_as_redis_py_fails() -> None:
    with pytest.raises(UnicodeEncodeError):
        resp.pack(("RPUSH", "k", "\ud800"))
    with pytest.raises(UnicodeEncodeError):
        resp._pack_in_python(("RPUSH", "k", "\ud800"))
    with pytest.raises(UnicodeEncodeError):
        redis_py_packs(("RPUSH", "k", "\ud800"))


REPEATED: list[tuple[Any, ...]] = [
    ("LMPOP", 2, "tt:t:urgent:a", "tt:t:inbox:a", "LEFT"),
    ("LMOVE", "tt:t:inbox:a", "tt:t:processing:a", "LEFT", "RIGHT"),
    ("HGETALL", "tt:t:agent:é"),
    ("LINDEX", b"tt:t:processing:a", 0),
]


@pytest.mark.parametrize("command", REPEATED, ids=lambda c: str(c[0]))
def test_a_repeated_command_packs_the_same_from_memory(command: tuple[Any, ...]) -> None:
    first = resp.pack(command)
    assert command in resp._PACKED  # else the second pack below would test nothing
    assert resp.pack(tuple(command)) == first == redis_py_packs(command)
    with resp.python_packing():
        assert resp.pack(command) == first


def test_the_packed_commands_remembered_are_bounded_and_only_plain_ones() -> None:
    for n in range(resp._REMEMBERED + 10):
        resp.pack(("LLEN", f"tt:t:inbox:{n}"))
    assert 0 < len(resp._PACKED) <= resp._REMEMBERED
    resp.pack(("LLEN", "k", 1.5))
    assert ("LLEN", "k", 1.5) not in resp._PACKED
    assert resp.pack(("RPUSH", "k", "v")) and ("RPUSH", "k", "v") not in resp._PACKED
