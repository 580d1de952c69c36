"""One town, Rust and Python agents: state, urgent messages and broadcasts as tinytown 0.10.

Built on what tinytown 0.10's own code wrote into Redis (``tests/data/upstream-state.tsv``)
and its JSON for the same values (``upstream-state-json.tsv``); see the wire format.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import shutil
import tempfile
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from support import client, project_dir, tinytownd

from tinytownd import Agent, Channel, InvalidMessageError, Message, Task, aio, hashform, migrate
from tinytownd.errors import StateError
from tinytownd.hashform import hash_time
from tinytownd.keys import TownKeys

DATA = Path(__file__).with_name("data")
TOWN = "fixture"


def _unescape(text: str) -> str:
    table = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}
    return re.sub(r"\\[\\tnr]", lambda m: table[m.group(0)], text)


def _rows(name: str, escaped: bool = True) -> list[list[str]]:
    with open(DATA / name, encoding="utf-8", newline="") as source:
        lines = [line for line in source if not line.startswith("#")]
    rows = csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE)
    if not escaped:
        return list(rows)
    return [
        [_unescape(cell) for cell in row]
        for row in csv.reader(lines[1:], delimiter="\t", quoting=csv.QUOTE_NONE)
    ]


def hashes() -> dict[str, tuple[str, dict[str, str]]]:
    """case -> (key, fields) for every agent and task case, fields in HGETALL order."""
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for case, key, kind, field, value in _rows("upstream-state.tsv"):
        if kind == "hash":
            found.setdefault(case, (key, {}))[1][field] = value
    return found


def documents() -> dict[str, str]:
    return {case: text for case, text in _rows("upstream-state-json.tsv", escaped=False)}


def lists() -> dict[str, dict[str, list[str]]]:
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for case, key, kind, _, value in _rows("upstream-state.tsv"):
        if kind in ("list", "pubsub"):
            found[case][key].append(value)
    return found


def kind_of(case: str) -> type[Agent] | type[Task]:
    return Agent if case.startswith("agent-") else Task


def to_microseconds(value: str) -> str:
    """A fixture value as we write it: nanoseconds cut to microseconds (the models'
    resolution), so a 9-digit time is compared as our writer formats its value."""
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}\+00:00", value):
        return hash_time(datetime.fromisoformat(value))
    return value


CASES = sorted(hashes())


def test_the_fixtures_cover_every_case_the_wire_format_names() -> None:
    assert len(CASES) == 43 and set(CASES) == set(documents())
    assert {"urgent-list", "broadcast", "inbox-priority-order"} <= set(lists())


@pytest.mark.parametrize("case", CASES)
def test_every_upstream_hash_reads_as_upstreams_json_says(case: str, tmp_redis: Any) -> None:
    key, fields = hashes()[case]
    tmp_redis.hset(key, mapping=fields)
    kind = kind_of(case)
    entity_id = key.rsplit(":", 1)[1]
    channel = Channel(tmp_redis, TOWN)
    read = channel.get_agent_state(entity_id) if kind is Agent else channel.get_task(entity_id)
    assert read == kind.from_json(documents()[case])


def test_the_quick_hash_reader_takes_upstreams_hashes_and_reads_them_as_the_lenient_one() -> None:
    taken = []
    for case, (_, fields) in hashes().items():
        raw = {name.encode(): value.encode() for name, value in fields.items()}
        quick = hashform.quick_document_of(raw, kind_of(case))
        if quick is not None:
            assert quick == hashform.lenient_document_of(raw, kind_of(case)), case
            taken.append(case)
    assert len(taken) == len(CASES), sorted(set(CASES) - set(taken))


def _read_both_ways(raw: dict[bytes, bytes], kind: type[Agent] | type[Task]) -> list[object]:
    outcomes: list[object] = []
    for read in (hashform.document_of, hashform.lenient_document_of):
        try:
            outcomes.append(read(raw, kind))
        except (InvalidMessageError, UnicodeDecodeError) as err:
            outcomes.append(repr(err))
    return outcomes


# Odd values a hand-edited or foreign hash may hold. None of them makes the lenient
# reader fall back to "now", so both readers must give the very same answer.
_ODD_AGENT_FIELDS = [
    ("id", b"9C8B7A6D-5E4F-4A3B-8C2D-1E0F9A8B7C6D"),
    ("id", b"not-a-uuid"),
    ("parent_agent_id", b"9C8B7A6D-5E4F-4A3B-8C2D-1E0F9A8B7C6D"),
    ("parent_agent_id", b"someone"),
    ("spawn_mode", b"Fresh"),
    ("state", b"asleep"),
    ("agent_type", b""),
    ("tasks_completed", "²".encode()),
    ("tasks_completed", "١٢".encode()),
    ("tasks_completed", b"-1"),
    ("tasks_completed", b"007"),
    ("tasks_completed", b"18446744073709551615"),
    ("tasks_completed", b"18446744073709551616"),
    ("rounds_completed", b"0" * 5000 + b"3"),
    ("rounds_completed", b"1" * 5000),
    ("last_heartbeat", b"2026-11-24T18:00:00+02:00"),
    ("last_heartbeat", b"2026-11-24T16:00:00Z"),
    ("last_heartbeat", b"2026-11-24 16:00:00.5+00:00"),
    ("last_heartbeat", b"2026-11-24X16:00:00+00:00"),
    ("last_heartbeat", b"2026-11-24T16:00:00"),
    ("last_heartbeat", b"yesterday"),
    ("last_active_at", b"2026-11-24T16:00Z"),
    ("name", b"caf\xc3\xa9"),
    ("name", b"\xff"),
    ("nickname", b"\xff"),
    ("newer_field", b"1.5"),
]
_ODD_TASK_FIELDS = [
    ("state", b"in_flight"),
    ("state", b"Done"),
    ("assigned_to", b"9C8B7A6D-5E4F-4A3B-8C2D-1E0F9A8B7C6D"),
    ("assigned_to", b"nobody"),
    ("started_at", b"2026-11-24T18:00:00+02:00"),
    ("completed_at", b"soon"),
    ("tags", b"[1]"),
    ("tags", b"not json"),
    ("tags", b'["\\ud800"]'),
    ("tags", b'["caf\\u00e9"]'),
    ("tags", b'{"a": "b"}'),
    ("description", b"\xff"),
]


@pytest.mark.parametrize(
    ("text", "count"),
    [("²", 0), ("١٢", 0), ("-1", 0), ("1" * 5000, 0), ("0" * 5000 + "3", 3), ("007", 7)],
)
def test_a_counter_reads_as_upstreams_u64_parse_or_zero(text: str, count: int) -> None:
    raw = {name.encode(): value.encode() for name, value in hashes()["agent-new-rust"][1].items()}
    raw[b"tasks_completed"] = text.encode()
    assert hashform.document_of(raw, Agent).tasks_completed == count


@pytest.mark.parametrize(
    ("case", "field", "value"),
    [("agent-optional-all", *odd) for odd in _ODD_AGENT_FIELDS]
    + [("task-optional-all", *odd) for odd in _ODD_TASK_FIELDS],
)
def test_an_unusual_hash_reads_exactly_as_the_lenient_reader_says(
    case: str, field: str, value: bytes
) -> None:
    raw = {name.encode(): text.encode() for name, text in hashes()[case][1].items()}
    raw[field.encode()] = value
    quick, lenient = _read_both_ways(raw, kind_of(case))
    assert quick == lenient


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("form", ["hash", "json"])
def test_what_we_write_is_what_upstream_wrote(case: str, form: str, tmp_redis: Any) -> None:
    key, fields = hashes()[case]
    value = kind_of(case).from_json(documents()[case])
    channel = Channel(tmp_redis, TOWN, state=form)
    if case.endswith("-optional-cleared"):  # upstream wrote it with every optional field first
        everything = value.evolve(
            **(
                {"current_task": "t", "nickname": "n", "role_id": "r"}
                if isinstance(value, Agent)
                else {"result": "r", "assigned_to": str(uuid.uuid4())}
            )
        )
        store(channel, everything)
    store(channel, value)
    if form == "hash":
        written = {k.decode(): v.decode() for k, v in tmp_redis.hgetall(key).items()}
        assert written == {name: to_microseconds(text) for name, text in fields.items()}
    else:  # the documented form: upstream's JSON, times at our microsecond resolution
        written = tmp_redis.get(key)
        assert json.loads(written).keys() == json.loads(documents()[case]).keys()
        assert kind_of(case).from_json(written) == value


def store(channel: Channel, value: Agent | Task) -> None:
    if isinstance(value, Agent):
        channel.set_agent_state(value)
    else:
        channel.set_task(value)


def test_listings_show_hash_and_json_entries_and_report_bad_ones(tmp_redis: Any) -> None:
    for key, fields in hashes().values():
        tmp_redis.hset(key, mapping=fields)
    channel = Channel(tmp_redis, TOWN, state="json")
    older = Agent(name="json-era", cli="claude")
    channel.set_agent_state(older)  # a string key beside the hashes
    bad_list = f"tt:{TOWN}:agent:{uuid.uuid4()}"
    tmp_redis.rpush(bad_list, "not an agent")
    no_id = f"tt:{TOWN}:agent:{uuid.uuid4()}"
    tmp_redis.hset(no_id, mapping={"name": "nameless"})
    listing = channel.agents_listing()
    upstream_agents = sum(1 for case in CASES if case.startswith("agent-"))
    assert len(listing.items) == upstream_agents + 1
    assert older in listing.items
    assert len(listing.problems) == 2
    assert any(bad_list in problem and "list" in problem for problem in listing.problems)
    assert any(no_id in problem for problem in listing.problems)
    assert len(channel.tasks_listing().items) == sum(1 for c in CASES if c.startswith("task-"))


def test_a_key_of_another_type_is_a_state_error_naming_it(tmp_redis: Any) -> None:
    agent_id = str(uuid.uuid4())
    tmp_redis.rpush(f"tt:{TOWN}:agent:{agent_id}", "x")
    with pytest.raises(StateError, match=f"tt:{TOWN}:agent:{agent_id} is a Redis list"):
        Channel(tmp_redis, TOWN).get_agent_state(agent_id)


def test_a_hash_write_replaces_a_json_string_in_place(tmp_redis: Any) -> None:
    worker = Agent(name="w", cli="claude", nickname="nick")
    Channel(tmp_redis, TOWN, state="json").set_agent_state(worker)
    hashed = Channel(tmp_redis, TOWN)
    assert hashed.get_agent_state(worker.id) == worker  # the JSON form still reads
    hashed.set_agent_state(worker.evolve(nickname=None))
    key = f"tt:{TOWN}:agent:{worker.id}"
    assert tmp_redis.type(key) == b"hash" and b"nickname" not in tmp_redis.hgetall(key)


@pytest.fixture(scope="module")
def shared_town() -> Iterator[Path]:
    """One running town for the whole module: these tests only read and write keys."""
    base = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    try:
        with project_dir(base, config=f'name = "{TOWN}"\n') as root:
            assert tinytownd("start", "--dir", str(root)).returncode == 0
            yield root
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def tmp_redis(shared_town: Path) -> Any:
    """A plain client of the module's town, emptied first, for writing fixtures raw."""
    raw = client(shared_town)
    raw.flushall()
    return raw


def test_urgent_messages_come_first_as_upstream_queues_them(tmp_redis: Any) -> None:
    ((key, elements),) = lists()["urgent-list"].items()
    agent_id = key.rsplit(":", 1)[1]
    for element in elements:  # as upstream left them: index 0 at the head
        tmp_redis.rpush(key, element)
    channel = Channel(tmp_redis, TOWN)
    later = Message.task(str(uuid.uuid4()), agent_id, "from the inbox")
    channel.send(later)
    assert channel.urgent_len(agent_id) == 2
    got = [channel.receive(agent_id, timeout=1) for _ in range(3)]
    assert [m.to_json() if m else None for m in got[:2]] == [
        Message.from_json(e).to_json() for e in elements
    ]
    assert got[2] == later


@pytest.mark.parametrize("mode", ["try_receive", "reliable", "asyncio"])
def test_every_receive_takes_urgent_before_the_inbox(tmp_redis: Any, mode: str) -> None:
    agent_id, sender = str(uuid.uuid4()), str(uuid.uuid4())
    plain = Channel(tmp_redis, TOWN)
    plain.send(Message.task(sender, agent_id, "normal work"))
    plain.send_urgent(Message.task(sender, agent_id, "drop everything"))
    if mode == "try_receive":
        first, second = plain.try_receive(agent_id), plain.try_receive(agent_id)
    elif mode == "reliable":
        reliable = Channel(tmp_redis, TOWN, reliable=True)
        first, second = reliable.receive(agent_id, timeout=1), reliable.receive(agent_id, 1)
        reliable.ack(agent_id)
    else:
        first, second = asyncio.run(receive_two(tmp_redis, agent_id))
    assert first is not None and first.body["description"] == "drop everything"
    assert second is not None and second.body["description"] == "normal work"


async def receive_two(raw: Any, agent_id: str) -> tuple[Message | None, Message | None]:
    path = raw.connection_pool.connection_kwargs["path"]
    client = aioredis.Redis(unix_socket_path=path)
    try:
        channel = aio.Channel(client, TOWN)
        return await channel.receive(agent_id, 1), await channel.receive(agent_id, 1)
    finally:
        await client.aclose()


def test_send_urgent_writes_what_upstream_writes(tmp_redis: Any) -> None:
    agent_id = str(uuid.uuid4())
    message = Message.task(str(uuid.uuid4()), agent_id, "urgent")
    Channel(tmp_redis, TOWN).send_urgent(message)
    assert tmp_redis.lrange(f"tt:{TOWN}:urgent:{agent_id}", 0, -1) == [message.to_json().encode()]
    assert tmp_redis.llen(f"tt:{TOWN}:inbox:{agent_id}") == 0  # the inbox is not touched


def test_broadcasts_cross_both_ways_with_default_settings(tmp_redis: Any) -> None:
    ((channel_name, payloads),) = lists()["broadcast"].items()
    assert channel_name == f"tt:{TOWN}:broadcast"
    ours = Channel(tmp_redis, TOWN)
    with ours.subscribe() as subscription:
        for payload in payloads:  # what upstream publishes, on upstream's channel
            tmp_redis.publish(channel_name, payload)
        heard = [subscription.get(timeout=5) for _ in payloads]
    assert [m.id if m else None for m in heard] == [json.loads(p)["id"] for p in payloads]

    listener = tmp_redis.pubsub()
    listener.subscribe(channel_name)  # where a tinytown 0.10 subscriber listens
    listener.get_message(timeout=5)
    sent = Message.informational(str(uuid.uuid4()), str(uuid.uuid4()), "from Python")
    assert ours.broadcast(sent) == 1
    event = listener.get_message(timeout=5)
    listener.close()
    assert event is not None and Message.from_json(event["data"]) == sent


@pytest.mark.parametrize(("start", "target"), [("json", "hash"), ("hash", "json")])
def test_migrate_state_converts_every_key_while_agents_write(
    tmp_redis: Any, start: str, target: str
) -> None:
    before = Channel(tmp_redis, TOWN, state=start)
    agents = [Agent(name=f"a{i}", cli="claude", tasks_completed=i) for i in range(300)]
    tasks = [Task(description=f"t{i}", tags=("x",)) for i in range(100)]
    for agent in agents:
        before.set_agent_state(agent)
    for task in tasks:
        before.set_task(task)
    last: dict[str, Agent] = {}
    stop = threading.Event()

    def keep_writing() -> None:  # an agent already on the new form, updating itself
        writer = Channel(client_like(tmp_redis), TOWN, state=target)
        count = 0
        while not stop.is_set():
            agent = agents[count % 20].evolve(rounds_completed=count)
            writer.set_agent_state(agent)
            last[agent.id] = agent
            count += 1

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        report = Channel(tmp_redis, TOWN).run(migrate.convert_state(TownKeys(TOWN), target))
    finally:
        stop.set()
        thread.join()
    assert report.problems == [] and report.scanned == 400
    assert len(report.converted) + report.already == 400
    wanted = b"hash" if target == "hash" else b"string"
    for key in tmp_redis.scan_iter(f"tt:{TOWN}:*"):
        assert tmp_redis.type(key) == wanted
    reader = Channel(tmp_redis, TOWN)
    for agent in agents:
        assert reader.get_agent_state(agent.id) == last.get(agent.id, agent)  # no lost write
    for task in tasks:
        assert reader.get_task(task.id) == task
    again = Channel(tmp_redis, TOWN).run(migrate.convert_state(TownKeys(TOWN), target))
    assert again.converted == [] and again.already == 400  # idempotent


def client_like(raw: Any) -> Any:
    """Another connection to the same server (threads must not share a pipeline)."""
    return redis.Redis(unix_socket_path=raw.connection_pool.connection_kwargs["path"])


def test_migrate_state_from_the_cli_reports_and_dry_runs(shared_town: Path, tmp_redis: Any) -> None:
    worker = Agent(name="w", cli="claude")
    Channel(tmp_redis, TOWN, state="json").set_agent_state(worker)
    planned = tinytownd("migrate", "--state", "hash", "--dry-run", "--dir", str(shared_town))
    assert planned.returncode == 0 and "would convert 1 key(s) to hash" in planned.stdout
    assert tmp_redis.type(f"tt:{TOWN}:agent:{worker.id}") == b"string"
    done = tinytownd("migrate", "--state", "hash", "--force", "--json", "--dir", str(shared_town))
    assert json.loads(done.stdout)["converted"] == [f"tt:{TOWN}:agent:{worker.id}"]
    assert tmp_redis.type(f"tt:{TOWN}:agent:{worker.id}") == b"hash"


def test_four_sends_leave_the_inbox_in_upstreams_order(tmp_redis: Any) -> None:
    ((key, elements),) = lists()["inbox-priority-order"].items()
    sent_in_order = sorted(elements, key=lambda e: Message.from_json(e).created_at)
    channel = Channel(tmp_redis, TOWN)
    for element in sent_in_order:
        channel.send(Message.from_json(element))
    stored = [Message.from_json(raw) for raw in tmp_redis.lrange(key, 0, -1)]
    assert [m.id for m in stored] == [json.loads(e)["id"] for e in elements]
