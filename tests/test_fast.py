"""``tinytownd[fast]``: orjson writes and reads exactly what the standard library does.

Every fixture the Rust tinytown wrote (``tests/data``), and documents made up to reach the
corners (floats, big ints, escapes, lone surrogates, enums), go through both paths; the
text must be byte for byte the same, and so must what is read back.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_interop import DATA, _rows, documents, hashes, kind_of

from tinytownd import Agent, InvalidMessageError, Message, Priority, Task, hashform, wire

orjson = pytest.importorskip("orjson")


def test_orjson_is_in_use_when_installed() -> None:
    assert wire.fast_json()
    with wire.standard_json():
        assert not wire.fast_json()
    assert wire.fast_json()


def both(call: Any) -> tuple[Any, Any]:
    """``call()`` with orjson, then without it."""
    fast = call()
    with wire.standard_json():
        pure = call()
    return fast, pure


def messages() -> list[str]:
    return [
        text for kind, text in _rows("upstream-fixtures.tsv", escaped=False) if kind == "message"
    ]


def test_the_fixtures_are_there() -> None:
    assert (DATA / "upstream-fixtures.tsv").exists() and len(messages()) >= 10


@pytest.mark.parametrize("text", messages())
def test_every_upstream_message_reads_and_writes_the_same_both_ways(text: str) -> None:
    fast, pure = both(lambda: Message.from_json(text.encode()))
    assert fast == pure
    written = both(fast.to_json)
    assert written[0].encode() == written[1].encode()


@pytest.mark.parametrize("case", sorted(documents()))
def test_every_upstream_state_document_reads_and_writes_the_same_both_ways(case: str) -> None:
    kind = kind_of(case)
    fast, pure = both(lambda: kind.from_json(documents()[case]))
    assert fast == pure
    written = both(fast.to_json)
    assert written[0].encode() == written[1].encode()
    _, fields = hashes()[case]
    raw = {name.encode(): value.encode() for name, value in fields.items()}
    from_hash = both(lambda: hashform.document_of(raw, kind))
    assert from_hash[0] == from_hash[1]
    assert both(lambda: hashform.fields_of(from_hash[0]))[0] == hashform.fields_of(from_hash[1])


CORNERS: list[Any] = [
    {"f": 1.5e-7, "g": 1e16, "h": -0.0, "i": 5e-324},  # orjson: 1.5e-7, Python: 1.5e-07
    {"big": 2**70, "neg": -(2**64)},  # past 64 bits: orjson refuses
    {"s": '\x00\x1f\x7f\u2028"\\/é😀'},  # escapes and non-ASCII
    {"lone": "\ud800"},  # a lone surrogate: orjson refuses
    {"p": Priority.HIGH, "n": [1, True, None, {"x": [2.5]}]},  # enums; a float deep down
    {1: "non-string key"},
    [float("nan"), float("inf")],
]


@pytest.mark.parametrize("doc", CORNERS, ids=range(len(CORNERS)))
def test_corner_documents_are_written_the_same_both_ways(doc: Any) -> None:
    fast, pure = both(lambda: wire.dumps(doc))
    assert fast == pure == json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize(
    "text",
    [
        b'{"a": NaN}',
        b'{"a": 123456789012345678901234567890}',
        b'{"a": [1.5e-7, 0.1]}',
        b'{"a": "\\ud800"}',
        b"{oops",
    ],
)
def test_what_orjson_refuses_to_read_reads_as_before(text: bytes) -> None:
    def read() -> Any:
        try:
            return wire.load(text, "doc")
        except InvalidMessageError as err:
            return str(err)

    fast, pure = both(read)
    assert fast == pure


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_any_document_is_written_the_same_both_ways(doc: dict[str, Any]) -> None:
    fast = wire.dumps(doc)
    with wire.standard_json():
        assert wire.dumps(doc) == fast


def test_models_round_trip_with_orjson() -> None:
    agent, task = Agent(name="w", cli="claude"), Task(description="x", tags=("a", "b"))
    assert Agent.from_json(agent.to_json()) == agent and Task.from_json(task.to_json()) == task
