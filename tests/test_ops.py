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
from tinytownd.ops import (
    Inflight,
    all_states,
    get_state,
    receive,
    receive_reliable,
    send,
    send_urgent,
    set_state,
)
from tinytownd.steps import RETRY_FOR, Move, Pause, Pop, TakeNow, retry_delay

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
