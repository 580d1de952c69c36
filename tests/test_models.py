"""The wire format: what the Rust tinytown writes must parse and round-trip."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinytownd import Agent, InvalidMessageError, Message, Priority, Task, TaskState, hashform, wire
from tinytownd.messages import _TEXT_BODY_NAMES, MESSAGE_TYPES, _read_usual

FIXTURES = Path(__file__).with_name("data") / "upstream-fixtures.tsv"
KINDS = {"message": Message, "agent": Agent, "task": Task}
A, B = str(uuid.uuid4()), str(uuid.uuid4())


def upstream_documents() -> list[tuple[str, str]]:
    if not FIXTURES.exists():
        pytest.skip(f"{FIXTURES} is not beside this checkout")
    lines = FIXTURES.read_text(encoding="utf-8").split("\n")
    rows = [line.split("\t", 1) for line in lines if line.strip() and not line.startswith("#")]
    return [(kind, text) for kind, text in rows]


def to_microseconds(text: str) -> str:
    return re.sub(r"(\.\d{6})\d+Z", r"\1Z", text)


def test_every_upstream_document_round_trips_byte_for_byte() -> None:
    documents = upstream_documents()
    assert {kind for kind, _ in documents} == set(KINDS)
    assert {json.loads(t)["type"] for k, t in documents if k == "message"} == set(MESSAGE_TYPES)
    for kind, text in documents:
        assert KINDS[kind].from_json(text).to_json() == to_microseconds(text)


def test_constructors_write_the_wire_shape() -> None:
    message = Message.task(A, uuid.UUID(B), "Fix the bug", priority="high")
    doc = json.loads(message.to_json())
    assert list(doc) == [
        "id",
        "from",
        "to",
        "type",
        "description",
        "priority",
        "created_at",
        "correlation_id",
    ]
    assert doc["to"] == B and doc["priority"] == "high" and doc["correlation_id"] is None
    assert doc["created_at"].endswith("Z") and len(doc["created_at"]) == 27
    rejected = Message.confirmation(A, B, "rejected", reason="no")
    assert json.loads(rejected.to_json())["ack_type"] == {"type": "rejected", "reason": "no"}
    assert Message.from_json(rejected.to_json()) == rejected


def test_every_type_has_a_constructor_that_round_trips() -> None:
    made = [
        Message.task(A, B, "d"),
        Message.query(A, B, "q?"),
        Message.informational(A, B, "s"),
        Message.confirmation(A, B, "thanks"),
        Message.task_assign(A, B, "t-1"),
        Message.task_done(A, B, "t-1", "ok"),
        Message.task_failed(A, B, "t-1", "boom"),
        Message.status_request(A, B),
        Message.status_response(A, B, "idle"),
        Message.ping(A, B),
        Message.pong(A, B),
        Message.shutdown(A, B),
        Message.custom(A, B, "k", '{"x":1}'),
    ]
    assert {m.type for m in made} == set(MESSAGE_TYPES)
    for message in made:
        assert Message.from_json(message.to_json()) == message


def test_reply_goes_back_correlated() -> None:
    ping = Message.ping(A, B)
    pong = ping.reply("pong")
    assert (pong.sender, pong.to, pong.correlation_id) == (B, A, ping.id)


def test_unknown_fields_from_newer_peers_survive_a_round_trip() -> None:
    doc = json.loads(Message.ping(A, B).to_json()) | {"trace": {"span": 7}}
    assert json.loads(Message.from_json(json.dumps(doc)).to_json())["trace"] == {"span": 7}
    agent = json.loads(Agent(name="w", cli="claude").to_json()) | {"gpu": "a100"}
    updated = Agent.from_json(json.dumps(agent)).evolve(tasks_completed=1)
    assert json.loads(updated.to_json())["gpu"] == "a100"


def test_missing_optional_fields_read_as_defaults() -> None:
    doc = {"id": A, "from": A, "to": B, "type": "ping", "created_at": "2026-11-24T16:08:00.5Z"}
    message = Message.from_json(json.dumps(doc))
    assert message.priority is Priority.NORMAL and message.correlation_id is None
    task = Task.from_json(
        json.dumps(
            {
                "id": A,
                "description": "d",
                "state": "in_flight",
                "created_at": "2026-11-24T16:00:00+00:00",
                "updated_at": "2026-11-24T18:00:00+02:00",
            }
        )
    )
    assert task.state is TaskState.RUNNING and task.tags == ()
    assert task.updated_at == task.created_at  # offsets are normalised to UTC


GOOD = json.loads(Message.task(A, B, "d").to_json())


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not utf-8", "not JSON"),
        (b"not json", "not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({**GOOD, "type": "dance"}).encode(), "unknown message type"),
        (json.dumps({**GOOD, "priority": "URGENT"}).encode(), "priority"),
        (json.dumps({**GOOD, "id": "nope"}).encode(), "id: 'nope' is not a UUID"),
        (json.dumps({**GOOD, "created_at": "yesterday"}).encode(), "created_at"),
        (json.dumps({**GOOD, "created_at": "2026-11-24T16:00:00.5"}).encode(), "no UTC offset"),
        (
            json.dumps({k: v for k, v in GOOD.items() if k != "description"}).encode(),
            "missing field 'description'",
        ),
        (json.dumps({**GOOD, "description": 3}).encode(), "description: expected a string"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_invalid_messages_raise_one_clear_error(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessageError, match=re.escape(reason)):
        Message.from_json(payload)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_message_or_an_invalid_message_error(payload: bytes) -> None:
    with contextlib.suppress(InvalidMessageError):
        Message.from_json(payload)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([*sorted(GOOD), "x"]),
        st.one_of(
            st.none(), st.integers(), st.text(max_size=40), st.sampled_from(list(GOOD.values()))
        ),
    )
)
def test_any_json_object_gives_a_value_or_one_clear_error(doc: dict[str, object]) -> None:
    for kind in (Message, Agent, Task):
        try:
            kind.from_json(json.dumps(doc))
        except InvalidMessageError as err:
            assert "\n" not in str(err)


def test_models_are_immutable() -> None:
    with pytest.raises(AttributeError):
        Message.ping(A, B).priority = Priority.LOW  # type: ignore[misc]


def test_models_built_in_python_accept_plain_strings_and_uuid_objects() -> None:
    task = Task(description="x").evolve(state="running")
    assert task.state is TaskState.RUNNING and json.loads(task.to_json())["state"] == "running"
    worker = Agent(name="w", cli="claude", id=uuid.UUID(A), state="idle")
    assert worker.id == A and Agent.from_json(worker.to_json()) == worker
    with pytest.raises(InvalidMessageError, match="state: 'IDLE' is not one of"):
        Agent(name="w", cli="claude", state="IDLE")


def test_fields_a_message_type_does_not_have_are_refused() -> None:
    with pytest.raises(
        InvalidMessageError, match="a ping message takes no fields, not description"
    ):
        Message.ping(A, B, description="x")


def test_a_lone_surrogate_escape_is_not_a_message() -> None:
    sender, receiver = str(uuid.uuid4()), str(uuid.uuid4())
    text = Message.task(sender, receiver, "PLACEHOLDER").to_json()
    with pytest.raises(InvalidMessageError, match="lone UTF-16 surrogate"):
        Message.from_json(text.replace("PLACEHOLDER", "\\ud800"))
    paired = Message.from_json(text.replace("PLACEHOLDER", "\\ud83d\\ude00"))  # a real pair
    assert paired.to_json().encode()


# -- the quick reader (Message.well_formed) agrees with the checking one -------------


def _read_both_ways(text: str | bytes) -> tuple[object, object]:
    """``Message.from_json`` (which takes the quick way when it can), and the checking
    reader alone: each the message read or the error's text."""
    outcomes: list[object] = []
    for read in (Message.from_json, lambda t: Message.from_dict(wire.load(t, "message"))):
        try:
            outcomes.append(read(text))
        except InvalidMessageError as err:
            outcomes.append(str(err))
    return outcomes[0], outcomes[1]


def test_the_quick_reader_takes_every_usual_upstream_message() -> None:
    usual = [json.loads(text) for kind, text in upstream_documents() if kind == "message"]
    taken = [doc for doc in usual if Message.well_formed(doc) is not None]
    assert taken, "no upstream message took the quick way"
    for doc in taken:
        assert Message.well_formed(doc) == Message.from_dict(doc)


_ODD_VALUES = [
    ("id", A.upper()),
    ("from", "not-a-uuid"),
    ("from", B.upper()),
    ("to", 7),
    ("created_at", "2026-11-24T18:00:00+02:00"),
    ("created_at", "2026-11-24t16:00:00Z"),
    ("created_at", "2026-11-24T16:00:00"),
    ("created_at", "yesterday"),
    ("priority", "URGENT"),
    ("priority", None),
    ("priority", ["high"]),
    ("priority", {"level": "high"}),
    ("correlation_id", B.upper()),
    ("correlation_id", 12),
    ("description", None),
    ("description", 12345678901234567890123),
    ("type", "status_response"),
    ("type", ["task"]),
    ("newer_field", 1.5e-7),
]


@pytest.mark.parametrize(("field", "value"), _ODD_VALUES)
def test_an_unusual_message_reads_exactly_as_the_checking_reader_says(
    field: str, value: object
) -> None:
    doc = json.loads(Message.task(A, B, "Fix the bug").to_json())
    doc[field] = value
    quick, checked = _read_both_ways(json.dumps(doc).encode())
    assert quick == checked


@pytest.mark.parametrize("field", ["id", "from", "to", "type", "created_at", "description"])
def test_a_message_missing_a_field_reads_exactly_as_the_checking_reader_says(field: str) -> None:
    doc = json.loads(Message.task(A, B, "Fix the bug").to_json())
    del doc[field]
    quick, checked = _read_both_ways(json.dumps(doc))
    assert isinstance(checked, str) and quick == checked


def test_a_hash_write_sets_upstreams_fields_in_its_order_and_drops_the_nulls() -> None:
    when = datetime(2026, 11, 24, 18, 0, 0, 500_000, tzinfo=timezone(timedelta(hours=2)))
    full = Agent(
        name="w", cli="claude", nickname="n", role_id="r", parent_agent_id=B, current_task="t"
    )
    values, absent = hashform.fields_of(replace(full, created_at=when, extra={"newer": [1]}))
    assert list(values) == [*hashform.AGENT_FIELDS, *hashform.AGENT_OPTIONAL, "newer"]
    assert values["created_at"] == "2026-11-24T16:00:00.500+00:00" and values["newer"] == "[1]"
    assert absent == []
    values, absent = hashform.fields_of(Task(description="d", tags=("a", "b")))
    assert list(values) == list(hashform.TASK_FIELDS) and values["tags"] == '["a","b"]'
    assert absent == list(hashform.TASK_OPTIONAL)


_TIMES = st.datetimes(
    min_value=datetime(1000, 1, 1),
    max_value=datetime(9999, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7))]),
)
_IDS = st.uuids().map(str)
_AGENTS = st.builds(
    Agent,
    name=st.text(),
    cli=st.text(),
    id=_IDS,
    nickname=st.none() | st.text(),
    parent_agent_id=st.none() | _IDS,
    current_task=st.none() | st.text(),
    created_at=_TIMES,
    last_heartbeat=_TIMES,
    tasks_completed=st.integers(0, 2**64 - 1),
    last_active_at=_TIMES,
)
_TASKS = st.builds(
    Task,
    description=st.text(),
    id=_IDS,
    state=st.sampled_from(TaskState),
    assigned_to=st.none() | _IDS,
    created_at=_TIMES,
    updated_at=_TIMES,
    started_at=st.none() | _TIMES,
    result=st.none() | st.text(),
    tags=st.lists(st.text()).map(tuple),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_AGENTS, _TASKS))
def test_what_a_hash_write_stores_the_quick_reader_reads_back_whole(
    document: Agent | Task,
) -> None:
    values, _ = hashform.fields_of(document)
    raw = {name.encode(): value.encode() for name, value in values.items()}
    lenient = hashform.lenient_document_of(raw, type(document))
    assert lenient == document
    # The quick reader may leave a hash to the lenient one (without orjson, tags with an
    # escape such as "\u0007"), but never reads it otherwise.
    quick = hashform.quick_document_of(raw, type(document))
    assert quick is None or quick == lenient


@pytest.mark.parametrize(
    "shape",
    [
        lambda text: " " + text,
        lambda text: text + "\n",
        lambda text: "\ufeff" + text,
        lambda text: text.replace(",", ", "),
    ],
    ids=["leading blank", "trailing newline", "BOM", "blanks inside"],
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_text_a_peer_does_not_write_reads_as_the_checking_reader_says(
    shape: Any, encoding: str
) -> None:
    raw = shape(Message.task(A, B, "Fix the bug").to_json()).encode(encoding)
    with wire.standard_json():
        quick, checked = _read_both_ways(raw)
    assert quick == checked


_TEXT = st.text() | st.sampled_from(['\x00\x1f\x7f\u2028"\\/é😀', "\ud800", "", "a\nb"])
_KINDS = st.sampled_from(["task", "query", "task_done", "custom", "ping", "status_response"])
_CREATED = _KINDS.flatmap(
    lambda kind: st.builds(
        Message,
        sender=st.just(A),
        to=st.just(B),
        type=st.just(kind),
        body=st.fixed_dictionaries({name: st.none() | _TEXT for name, _ in MESSAGE_TYPES[kind]}),
        priority=st.sampled_from(Priority),
        created_at=_TIMES,
        correlation_id=st.none() | _IDS,
    )
)
# Built by hand, the fields may hold what no constructor gives: to_dict must decide.
_BY_HAND = st.builds(
    Message,
    sender=_TEXT,
    to=_IDS | st.uuids(),
    type=_TEXT,
    body=st.dictionaries(
        st.sampled_from(["description", "id", "priority", "x"]) | _TEXT,
        st.none() | _TEXT | st.integers() | st.dictionaries(_TEXT, _TEXT, max_size=2),
        max_size=3,
    ),
    priority=st.sampled_from(Priority),
    id=_TEXT,
    created_at=_TIMES,
    correlation_id=st.none() | _TEXT,
    extra=st.dictionaries(st.sampled_from(["extra", "from"]), _TEXT, max_size=1),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(_CREATED | _BY_HAND)
def test_a_message_is_written_as_json_dumps_writes_its_dict(message: Message) -> None:
    try:
        expected = json.dumps(message.to_dict(), ensure_ascii=False, separators=(",", ":"))
    except TypeError:  # a UUID object for an id: refused the same way
        with pytest.raises(TypeError):
            message.to_json()
        return
    assert message.to_json() == expected
    with wire.standard_json():
        assert message.to_json() == expected


def test_the_usual_message_is_written_from_its_template() -> None:
    # Without this, the test above would pass with the template never used.
    for message in (
        Message.task(A, B, 'say "hi"\n'),
        Message.status_response(A, B, "idle"),
        Message.ping(A, B, priority="urgent", correlation_id=uuid.uuid4()),
    ):
        assert message._usual_json() == json.dumps(
            message.to_dict(), ensure_ascii=False, separators=(",", ":")
        )
    assert Message.confirmation(A, B, "received")._usual_json() is None
    assert replace(Message.ping(A, B), extra={"newer": 1})._usual_json() is None
    assert replace(Message.ping(A, B), body={"priority": "x"})._usual_json() is None


# -- the template reader (the usual message as both writers emit it) ------------------


def _checked(text: str | bytes) -> Message | str:
    try:
        return Message.from_dict(wire.load(text, "message"))
    except InvalidMessageError as err:
        return str(err)


def test_the_template_reader_takes_every_usual_upstream_message_as_the_checker_reads_it() -> None:
    texts = [text.strip() for kind, text in upstream_documents() if kind == "message"]
    taken = 0
    for text in texts:
        usual = _read_usual(Message, text.encode())
        if json.loads(text)["type"] in _TEXT_BODY_NAMES:
            assert usual is not None, text  # exactly the form the Rust tinytown writes
        if usual is not None:
            taken += 1
            assert usual == _checked(text)
    assert taken >= 10


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_CREATED, st.integers(0, 400), st.sampled_from(['"', "\\", " ", "x", "\x01", "é", ""]))
def test_the_template_reader_never_reads_a_message_otherwise_than_the_checker(
    message: Message, at: int, edit: str
) -> None:
    text = message.to_json()
    for changed in (text, text[:at] + edit + text[at + 1 :], text[:at] + edit + text[at:]):
        usual = _read_usual(Message, changed.encode(errors="surrogatepass"))
        if usual is not None:
            assert usual == _checked(changed)
    if type(message.body.get("description")) is str and "\\u" not in text:
        assert _read_usual(Message, text) == message  # the unedited text is taken


@pytest.mark.parametrize(("field", "value"), _ODD_VALUES)
def test_an_unusual_compact_message_reads_as_the_checker_says(field: str, value: object) -> None:
    doc = json.loads(Message.task(A, B, 'Fix "the" bug\n').to_json())
    doc[field] = value
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    assert _read_both_ways(text.encode())[0] == _checked(text)
