"""The protocol core without a server: each operation driven step by step with canned replies.

``tinytownd.ops`` yields Redis commands and receives replies; nothing here ever sees
Redis. These tests pin down which commands go out, in which order, and what each
operation does with every kind of reply: retries, deadlines, dead letters, both state
forms.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from tinytownd import Agent, Message, Priority
from tinytownd.errors import StateError
from tinytownd.keys import TownKeys
from tinytownd.migrate import move_across_slots
from tinytownd.ops import (
    URGENT_CHECK,
    Inflight,
    all_states,
    get_state,
    receive,
    receive_reliable,
    scan,
    send,
    send_urgent,
    set_state,
)
from tinytownd.routing import merge, route
from tinytownd.steps import AS_SENT, RETRY_FOR, Move, Pause, Pop, Primaries, TakeNow, retry_delay

KEYS = TownKeys("t")
ME, YOU = str(uuid.uuid4()), str(uuid.uuid4())


def drive(op: Any, replies: list[Any]) -> tuple[list[Any], Any]:
    """Run ``op`` feeding ``replies`` in order (an exception is thrown in); return the
    steps it yielded and its result."""
    steps = [next(op)]
    try:
        for reply in replies:
            step = op.throw(reply) if isinstance(reply, BaseException) else op.send(reply)
            steps.append(step)
    except StopIteration as done:
        return steps, done.value
    raise AssertionError(f"the operation wants more than {len(replies)} replies: {steps[-1]}")


def test_send_pushes_by_priority_and_urgent_goes_to_its_own_list() -> None:
    high = Message.task(ME, YOU, "now", priority=Priority.HIGH)
    steps, length = drive(send(KEYS, high), [3])
    assert steps == [("LPUSH", KEYS.inbox(YOU), high.to_json())] and length == 3
    low = Message.task(ME, YOU, "later", priority=Priority.LOW)
    assert drive(send(KEYS, low), [1])[0][0][0] == "RPUSH"
    steps, _ = drive(send_urgent(KEYS, low), [1])
    assert steps == [("LPUSH", KEYS.urgent(YOU), low.to_json())]


def test_receive_takes_urgent_first_and_dead_letters_bad_payloads() -> None:
    good = Message.ping(ME, YOU)
    steps, message = drive(
        receive(KEYS, YOU, timeout=5),
        [
            b"not json",  # a Pop's reply, as the driver hands it over: the payload
            1,  # the RPUSH to the dead-letter list
            good.to_json().encode(),
        ],
    )
    first, dead, again = steps
    assert isinstance(first, Pop) and first.urgent == KEYS.urgent(YOU)
    assert first.command()[:3] == ("BLPOP", KEYS.urgent(YOU), KEYS.inbox(YOU))
    assert dead == ("RPUSH", KEYS.dead(YOU), b"not json")
    assert isinstance(again, Pop) and message == good


def test_a_receive_that_may_not_wait_asks_both_lists_with_one_lmpop() -> None:
    step = next(receive(KEYS, YOU, timeout=0))
    assert isinstance(step, Pop)
    assert step.command() == ("LMPOP", 2, KEYS.urgent(YOU), KEYS.inbox(YOU), "LEFT")
    assert Pop.value([b"k", [b"payload"]]) == b"payload" and Pop.value(None) is None


def test_a_blocking_pop_asks_only_for_the_time_left_and_retries_within_it() -> None:
    deadline = time.monotonic() + 2
    pop = Pop(KEYS.inbox(YOU), deadline)
    assert 1.9 < float(pop.command()[-1]) <= 2.0
    assert pop.reply_by() == pytest.approx(deadline + 0.5)
    now = time.monotonic()
    first = retry_delay(pop, 0, now)
    assert first is not None and 0.0075 <= first <= 0.0125  # 10 ms, with jitter
    assert retry_delay(Pop(KEYS.inbox(YOU), now - 1), 0, now) is None  # past its timeout
    assert retry_delay(("GET", "k"), 3, now - RETRY_FOR - 0.01) is None  # budget spent
    later = retry_delay(("GET", "k"), 30, now - RETRY_FOR, retry_for=60.0)  # behind Sentinel
    assert later is not None and 0.375 <= later <= 0.625  # capped at 0.5 s, with jitter
    soon = retry_delay(Pop(KEYS.inbox(YOU), now + 0.05), 30, now, retry_for=60.0)
    assert soon is not None and soon <= 0.05  # a receive never outlives its timeout
    assert retry_delay(Move(KEYS.inbox(YOU), deadline, target="p"), 0, now) is None  # never


def test_every_command_a_pop_sends_goes_out_as_sent_so_its_deadline_holds() -> None:
    # The drivers bound a pop by its deadline only on the pooled path (steps.AS_SENT).
    now = time.monotonic()
    pops: list[Pop] = []
    for deadline in (None, now - 1, now + 5):
        for urgent in (None, KEYS.urgent(YOU)):
            pops.append(Pop(KEYS.inbox(YOU), deadline, urgent))
        for ack in (None, b"taken before"):
            pops.append(Move(KEYS.inbox(YOU), deadline, target="p", ack=ack))
            for by_text in (False, True):
                pops.append(TakeNow(KEYS.inbox(YOU), deadline, "u", "p", ack, by_text))
    sent = {command[0] for pop in pops for command in pop.commands()}
    assert sent == {"BLPOP", "LPOP", "LMPOP", "BLMOVE", "LMOVE", "LREM", "EVALSHA", "EVAL"}
    assert sent <= AS_SENT


def test_reliable_receive_takes_in_one_script_then_waits_and_rechecks_after_a_failure() -> None:
    inflight, payload = Inflight(checked=True), Message.ping(ME, YOU).to_json().encode()
    steps, message = drive(
        receive_reliable(KEYS, YOU, 5, inflight),
        [
            NoScriptError("no script"),  # Redis restarted: send the script's text
            None,  # nothing waiting
            RedisConnectionError("gone"),  # the blocking move lost its connection
            None,  # the Pause
            None,  # LINDEX processing 0: nothing left behind
            None,  # TakeNow again
            payload,  # the blocking move
        ],
    )
    take, by_text, wait, pause, check, take_again, wait_again = steps
    assert isinstance(take, TakeNow) and take.commands()[0][0] == "EVALSHA"
    assert isinstance(by_text, TakeNow) and by_text.commands()[0][0] == "EVAL"
    assert isinstance(wait, Move) and not isinstance(wait, TakeNow)
    assert isinstance(pause, Pause)
    assert check == ("LINDEX", KEYS.processing(YOU), 0)  # the move may have happened
    assert isinstance(take_again, TakeNow) and isinstance(wait_again, Move)
    assert message is not None and inflight.payload == payload


def test_state_writes_are_one_transaction_and_replace_a_json_string() -> None:
    agent = Agent(name="w", cli="claude")
    steps, _ = drive(set_state(KEYS.agent(agent.id), agent), [[b"OK", b"QUEUED", [0, 11]]])
    (transaction,) = steps
    assert [command[0] for command in transaction] == ["MULTI", "HDEL", "HSET", "EXEC"]
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    steps, _ = drive(
        set_state(KEYS.agent(agent.id), agent), [[b"OK", b"Q", b"Q", [wrongtype, wrongtype]], []]
    )
    assert [command[0] for command in steps[1]] == ["MULTI", "DEL", "HSET", "EXEC"]
    steps, _ = drive(set_state(KEYS.agent(agent.id), agent, "json"), [b"OK"])
    assert steps == [("SET", KEYS.agent(agent.id), agent.to_json())]


def test_state_reads_take_either_form_and_name_a_key_of_another_type() -> None:
    agent = Agent(name="w", cli="claude")
    key = KEYS.agent(agent.id)
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    assert drive(get_state(key, Agent), [{}])[1] is None  # no such key
    steps, read = drive(get_state(key, Agent), [wrongtype, agent.to_json().encode()])
    assert [step[0] for step in steps] == ["HGETALL", "GET"] and read == agent
    with pytest.raises(StateError, match=f"{key} is a Redis list"):
        drive(get_state(key, Agent), [wrongtype, wrongtype, b"list"])


def test_listings_read_each_key_by_its_type_and_report_what_is_not_state() -> None:
    agent = Agent(name="w", cli="claude")
    names = [KEYS.agent(agent.id).encode(), b"tt:t:agent:broken", b"tt:t:agent:gone"]
    steps, listing = drive(
        all_states(KEYS, Agent),
        [[None], [b"0", names], [b"string", b"list", b"none"], [agent.to_json().encode()]],
    )
    assert steps[2] == [("TYPE", name) for name in names]
    assert steps[3] == [("GET", names[0])]
    assert listing.items == [agent]
    assert listing.problems == ["tt:t:agent:broken: a Redis list, not an agent or task"]


# -- on a Redis Cluster ---------------------------------------------------------------

CLUSTER = TownKeys("t", cluster=True)


def test_a_cluster_receive_looks_at_the_urgent_list_between_slices_of_waiting() -> None:
    good = Message.ping(ME, YOU).to_json().encode()
    began = time.monotonic()
    steps, message = drive(receive(CLUSTER, YOU, timeout=None), [None, None, None, good])
    urgent, wait, urgent_again, wait_again = steps
    assert isinstance(urgent, Pop) and urgent.command() == ("LPOP", CLUSTER.urgent(YOU))
    assert isinstance(wait, Pop) and wait.urgent is None  # one key, so one slot
    assert wait.command()[:2] == ("BLPOP", CLUSTER.inbox(YOU))
    assert wait.deadline is not None  # one slice, not the forever the caller asked for
    assert began + URGENT_CHECK <= wait.deadline <= time.monotonic() + URGENT_CHECK
    assert urgent_again.key == urgent.key and isinstance(wait_again, Pop)
    assert message is not None and message.type == "ping"


def test_a_cluster_receive_rides_out_a_failover_but_never_its_own_timeout() -> None:
    lost, good = RedisConnectionError("primary gone"), Message.ping(ME, YOU)
    steps, message = drive(
        receive(CLUSTER, YOU, timeout=5, retry_for=60.0),
        [None, lost, None, b"\xff", 1, good.to_json().encode()],
    )
    assert isinstance(steps[2], Pause) and steps[3].key == CLUSTER.urgent(YOU)  # again
    assert steps[4] == ("RPUSH", CLUSTER.dead(YOU), b"\xff") and message == good
    with pytest.raises(RedisConnectionError):  # no time is left to retry in
        drive(receive(CLUSTER, YOU, timeout=0, retry_for=60.0), [None, lost])


def test_a_cluster_reliable_receive_keeps_each_list_in_its_own_slot() -> None:
    inflight = Inflight()
    payload = Message.ping(ME, YOU).to_json().encode()
    steps, message = drive(receive_reliable(CLUSTER, YOU, 5, inflight), [None, None, payload])
    check_inbox, check_urgent, take_urgent = steps
    assert check_inbox == ("LINDEX", CLUSTER.processing(YOU), 0)
    assert check_urgent == ("LINDEX", CLUSTER.urgent_processing(YOU), 0)
    assert isinstance(take_urgent, Move) and not isinstance(take_urgent, TakeNow)
    assert take_urgent.command()[:3] == (
        "LMOVE",
        CLUSTER.urgent(YOU),
        f"tt:t:processing:{{{CLUSTER.urgent(YOU)}}}",
    )
    assert message is not None and inflight.source == CLUSTER.urgent_processing(YOU)
    steps, _ = drive(receive_reliable(CLUSTER, YOU, 0, inflight), [None, 1, None])
    assert steps[1] == ("LREM", CLUSTER.urgent_processing(YOU), 1, payload)  # acknowledged
    assert steps[2].command()[:3] == ("LMOVE", CLUSTER.inbox(YOU), CLUSTER.processing(YOU))
    inflight.payload, inflight.source = payload, CLUSTER.processing(YOU)
    steps, _ = drive(receive_reliable(CLUSTER, YOU, 0, inflight), [None, None])
    take_inbox = steps[1]  # the acknowledgement goes with the move, in one round trip
    assert take_inbox.commands()[0] == ("LREM", CLUSTER.processing(YOU), 1, payload)
    assert inflight.payload is None


def test_listings_scan_every_primary_to_its_last_cursor() -> None:
    steps, names = drive(
        scan("tt:t:agent:*"), [["a", "b"], [b"7", [b"k1"]], [b"0", [b"k2"]], [b"0", []]]
    )
    assert isinstance(steps[0], Primaries)
    assert [(s.node, s.command[1]) for s in steps[1:]] == [("a", 0), ("a", b"7"), ("b", 0)]
    assert names == [b"k1", b"k2"]


def test_a_state_key_rewritten_between_type_and_read_is_looked_at_again() -> None:
    import redis

    from tinytownd.migrate import ConversionReport, _convert_one

    report = ConversionReport()
    wrong = redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    steps, _ = drive(
        _convert_one("tt:t:agent:x", Agent, "json", False, report), [b"hash", wrong, b"string"]
    )
    assert [s[0] for s in steps] == ["TYPE", "HGETALL", "TYPE"]
    assert report.already == 1 and report.problems == []


def test_a_key_scan_returns_twice_is_listed_once() -> None:
    # Redis may return a key more than once while it rehashes (SCAN's documented promise).
    _, names = drive(scan("tt:t:agent:*"), [[None], [b"9", [b"k1", b"k2"]], [b"0", [b"k2"]]])
    assert names == [b"k1", b"k2"]


def test_commands_go_to_their_keys_node_and_a_transaction_stays_whole() -> None:
    node = {"x": "n1", "y": "n2", None: "n0"}.__getitem__
    commands = [
        ("RPUSH", "x", "1"),
        ("MULTI",),
        ("HSET", "y", "f", "v"),
        ("EXEC",),
        ("EVALSHA", "sha", 1, "x"),
    ]
    assert route(commands, node) == [("n1", [0, 1, 4]), ("n2", [2, 3])]
    assert route([("MULTI",), ("SET", "y", 1), ("EXEC",)], node) == [("n2", [0, 1, 2])]
    assert route([("PING",)], node) == [("n0", [0])]
    assert merge(3, [([0, 2], ["a", "c"]), ([1], ["b"])]) == ["a", "b", "c"]


def test_a_key_moves_across_slots_once_and_a_stopped_move_is_finished() -> None:
    steps, moved = drive(move_across_slots(b"old", b"new"), [b"P", -1, b"OK", 1])
    assert [s[0] for s in steps] == ["DUMP", "PTTL", "RESTORE", "EVAL"]
    assert steps[2] == ("RESTORE", b"new", 0, b"P") and moved is True
    busy = ResponseError("BUSYKEY Target key name already exists.")
    steps, moved = drive(move_across_slots(b"old", b"new"), [b"P", -1, busy, b"P", 1])
    assert steps[3] == ("DUMP", b"new") and moved is True  # the copy of a stopped run
    steps, moved = drive(move_across_slots(b"old", b"new"), [b"P", -1, busy, b"other"])
    assert moved is False  # a different key by that name: a conflict
    # ``old`` changed while it moved: the untouched copy is taken back, then moved again.
    replies = [b"P", -1, b"OK", -1, 1, b"Q", -1, b"OK", 1]
    steps, moved = drive(move_across_slots(b"old", b"new"), replies)
    assert steps[4] == ("EVAL", steps[3][1], 1, b"new", b"P") and moved is True
    # ``old`` was emptied meanwhile (an agent took the last message): nothing moves.
    steps, moved = drive(move_across_slots(b"old", b"new"), [b"P", -1, b"OK", 0, 1])
    assert moved is None
