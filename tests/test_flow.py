"""Dispatcher and Tracker: credit, load-aware choice, re-dispatch, receipts (pure, fake clock).

Most tests here are about messages: their dispatchers put each message in a frame of its own
(`frame_max=1`), and `done`/`failed` below name messages by id. The tests under "frames"
are about the books kept per frame."""

from __future__ import annotations

import pytest

from seda.engine.credit import Dispatcher, Frame, SeenIds, Tracker
from seda.engine.wire import ATTEMPT, ID


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def env(i: int) -> list[object]:
    return [i, "source", 1, 0.0, f"item {i}", i, 1]


def make(workers: int = 2, attempts: int = 3, frame_max: int = 1
         ) -> tuple[Dispatcher, Clock]:
    clock = Clock()
    d = Dispatcher("p", [f"p.{i}" for i in range(workers)], lambda _s: attempts, clock,
                   keys=1000, frame_max=frame_max)
    return d, clock


def sent_ids(out: dict[str, list[Frame]]) -> dict[str, list[int]]:
    return {w: [e[ID] for f in frames for e in f.envs] for w, frames in out.items()}


def keys_of(d: Dispatcher, worker: str, ids: list[int]) -> list[int]:
    """The keys of the frames `worker` holds that hold one of `ids`."""
    link = d.links.get(worker)
    return [f.key for f in link.pending.values() if any(e[ID] in ids for e in f.envs)] \
        if link is not None else []


def done_ids(d: Dispatcher, worker: str, ids: list[int]) -> int:
    """The worker says DONE of the frames that hold these messages."""
    return d.done(worker, keys_of(d, worker, ids) or [-1])


def fail_id(d: Dispatcher, worker: str, msg_id: int, *args: object) -> object:
    """The worker says message `msg_id` failed (by its frame's key)."""
    keys = keys_of(d, worker, [msg_id]) or [-1]
    return d.failed(worker, keys[0], msg_id, *args)  # type: ignore[arg-type]


def test_nothing_is_sent_without_credit() -> None:
    d, _ = make()
    d.submit("s", env(1))
    assert d.dispatch() == {}
    d.grant("p.0", 4, pid=10)
    assert sent_ids(d.dispatch()) == {"p.0": [1]}


def test_window_bounds_what_a_worker_holds() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 3, pid=10)
    for i in range(10):
        d.submit("s", env(i))
    assert sent_ids(d.dispatch()) == {"p.0": [0, 1, 2]}
    assert d.dispatch() == {}
    assert done_ids(d, "p.0", [0, 1]) == 2
    assert sent_ids(d.dispatch()) == {"p.0": [3, 4]}
    assert d.in_flight() == 3 and len(d.queue) == 5


def test_work_is_spread_over_idle_workers() -> None:
    d, _ = make()
    d.grant("p.0", 8, pid=10)
    d.grant("p.1", 8, pid=11)
    for i in range(4):
        d.submit("s", env(i))
    out = sent_ids(d.dispatch())
    assert sorted(len(v) for v in out.values()) == [2, 2]


def test_a_stalled_worker_gets_no_more_work_while_another_can_take_it() -> None:
    d, clock = make()
    d.grant("p.0", 8, pid=10)
    d.grant("p.1", 8, pid=11)
    d.submit("s", env(0))  # the long one
    assert sent_ids(d.dispatch()) == {"p.0": [0]}
    for i in range(1, 40):  # short ones arrive while the long one runs
        clock.now += 0.01
        d.submit("s", env(i))
        for worker, ids in sent_ids(d.dispatch()).items():
            assert worker == "p.1", f"message {ids} queued behind the stalled worker"
            done_ids(d, worker, ids)
    assert d.in_flight() == 1


def test_one_slow_first_round_trip_does_not_hide_a_stalled_worker() -> None:
    """The first answer of a cold worker can take far longer than the usual round trip
    (imports, caches). It must not set the stall limit on its own: the long message on p.0
    is 0.3 s old, and the short ones still go to p.1 only."""
    d, clock = make()
    d.grant("p.0", 8, pid=10)
    d.grant("p.1", 8, pid=11)
    d.submit("s", env(0))  # the long one
    assert sent_ids(d.dispatch()) == {"p.0": [0]}
    clock.now += 0.2
    d.submit("s", env(1))
    assert sent_ids(d.dispatch()) == {"p.1": [1]}
    clock.now += 0.08  # a cold first answer: 80 ms
    done_ids(d, "p.1", [1])
    lag: list[int] = []  # p.1 answers each message two arrivals later: it holds two
    for i in range(2, 40):
        clock.now += 0.01
        d.submit("s", env(i))
        for worker, ids in sent_ids(d.dispatch()).items():
            assert worker == "p.1", f"message {ids} queued behind the stalled worker"
            lag += ids
        if len(lag) > 2:
            done_ids(d, "p.1", [lag.pop(0)])
    assert d.in_flight() == 3


def test_when_every_worker_is_stalled_work_still_flows() -> None:
    d, clock = make(workers=1)
    d.grant("p.0", 8, pid=10)
    d.submit("s", env(0))
    d.dispatch()
    clock.now += 10
    d.submit("s", env(1))
    assert sent_ids(d.dispatch()) == {"p.0": [1]}


def test_down_worker_messages_go_out_again_as_one_group_uncharged() -> None:
    d, clock = make()
    d.grant("p.0", 4, pid=10)
    for i in range(3):
        d.submit("s", env(i))
    d.dispatch()
    assert d.down("p.0", pid=10) == []
    assert [e[ID] for _, e in d.suspects] == [0, 1, 2]
    assert all(e[ATTEMPT] == 1 for _, e in d.suspects), "held is not the same as guilty"
    d.grant("p.1", 4, pid=11)
    d.submit("s", env(3))
    assert sent_ids(d.dispatch()) == {"p.1": [3]}  # p.1 is the last free worker: kept free
    done_ids(d, "p.1", [3])
    clock.now += d.SPARE_WAIT  # p.0 is not coming back: the suspects take p.1 after all
    assert sent_ids(d.dispatch()) == {"p.1": [0, 1, 2]}  # the group, on a worker of its own
    d.submit("s", env(4))
    assert d.dispatch() == {}  # nothing joins it
    done_ids(d, "p.1", [0, 1])
    assert d.links["p.1"].isolated and d.dispatch() == {}
    done_ids(d, "p.1", [2])  # the whole group is done: no poison among them
    assert not d.links["p.1"].isolated and sent_ids(d.dispatch()) == {"p.1": [4]}


def test_a_group_of_suspects_that_kills_again_is_halved_until_the_poison_is_alone() -> None:
    """Bisection: eight suspects, one of them (5) kills whoever runs it. Only 5 is ever
    charged, after log2(8) = 3 deaths of groups; the innocent ones all finish."""
    d, _ = make(attempts=1)
    d.grant("p.0", 8, pid=10)
    for i in range(8):
        d.submit("s", env(i))
    d.dispatch()
    assert d.down("p.0", pid=10) == [] and list(d.groups) == [8]
    pid, done, letters = 11, [], []
    for _ in range(20):  # (bounded: a bisection that never halves would loop for ever)
        if not d.suspects:
            break
        d.grant("p.0", 8, pid=pid)
        [ids] = sent_ids(d.dispatch()).values()
        if 5 in ids:
            letters += d.down("p.0", pid=pid)
            pid += 1
        else:
            done_ids(d, "p.0", ids)
            done += ids
    assert not d.suspects
    [letter] = letters
    assert letter.env[ID] == 5 and letter.env[ATTEMPT] == 2 and pid == 15  # 4 deaths
    assert sorted(done) == [0, 1, 2, 3, 4, 6, 7]


def test_a_suspect_that_kills_its_worker_alone_is_charged_then_dead_lettered() -> None:
    d, _ = make(attempts=2)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(7))
    d.submit("s", env(8))
    d.dispatch()
    assert d.down("p.0", pid=10) == []  # held two: nobody charged
    d.grant("p.0", 4, pid=11)
    assert sent_ids(d.dispatch()) == {"p.0": [7, 8]}  # the two, as a group
    assert d.down("p.0", pid=11) == []  # the group killed it: halves, nobody charged
    for pid in (12, 13):
        d.grant("p.0", 4, pid=pid)
        assert sent_ids(d.dispatch()) == {"p.0": [7]}
        letters = d.down("p.0", pid=pid)  # died with 7 alone
    [letter] = letters
    assert (letter.stage, letter.env[ID], letter.env[ATTEMPT]) == ("s", 7, 3)
    assert "died while running it (alone) 2 times" in letter.error
    assert [e[ID] for _, e in d.suspects] == [8]
    assert [e[ATTEMPT] for _, e in d.suspects] == [1]


def test_a_poison_never_takes_the_whole_pool_down() -> None:
    """Two workers and a message that kills whoever runs it: it waits for its last victim's
    restart instead of killing the other worker, which serves the rest all along."""
    d, clock = make(attempts=3)
    d.grant("p.0", 4, pid=10)
    d.grant("p.1", 4, pid=11)
    d.submit("s", env(0))
    assert sent_ids(d.dispatch()) == {"p.0": [0]}
    assert d.down("p.0", pid=10) == []  # it was not alone there: not charged yet
    letters = []
    for pid in (20, 21, 22):
        clock.now += 0.5
        d.submit("s", env(pid))  # normal work meanwhile goes to p.1; the suspect waits
        assert sent_ids(d.dispatch()) == {"p.1": [pid]}
        done_ids(d, "p.1", [pid])
        d.grant("p.0", 4, pid=pid)  # p.0 is back: the suspect goes there, alone
        assert sent_ids(d.dispatch()) == {"p.0": [0]}
        letters = d.down("p.0", pid=pid)
    [letter] = letters
    assert "died while running it (alone) 3 times" in letter.error
    assert d.links["p.1"].up and not d.links["p.1"].pending


def test_handler_failure_retries_then_dead_letters() -> None:
    d, _ = make(attempts=2)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    assert fail_id(d, "p.0", 1, "s: ValueError: bad", "tb") is None
    assert sent_ids(d.dispatch()) == {"p.0": [1]}
    letter = fail_id(d, "p.0", 1, "s: ValueError: bad", "tb")
    assert letter is not None and letter.error == "s: ValueError: bad"


def test_a_failure_with_a_status_is_not_retried() -> None:
    """A call past its time limit (an async worker says 504) fails at once, attempts left
    or not, and its client gets that status."""
    d, _ = make(attempts=3)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    letter = fail_id(d, "p.0", 1, "s: the handler ran over its time limit (1 s)", "", 504)
    assert letter is not None and letter.status == 504 and not d.queue
    assert not d.dispatch()


def test_a_new_incarnation_implies_the_old_one_died() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    assert d.grant("p.0", 4, pid=20) == []  # restarted before the supervisor said so
    assert [e[ID] for _, e in d.suspects] == [1]
    assert d.down("p.0", pid=10) == []  # the late word about pid 10 changes nothing
    assert sent_ids(d.dispatch()) == {"p.0": [1]}


def test_unreachable_worker_takes_the_batch_back() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.submit("s", env(2))
    out = d.dispatch()
    d.unreachable("p.0", out["p.0"])
    assert [e[ID] for _, e in d.queue] == [1, 2]
    assert d.in_flight() == 0 and d.dispatch() == {}


def test_a_dropped_frame_sends_what_the_worker_held_again_charged() -> None:
    """A frame between a sender and a worker was dropped (see Node.lost_frame): what the
    worker holds goes out again, in order, each charged an attempt -- so a fault that keeps
    recurring ends in the dead-letter file instead of a loop."""
    d, _ = make(workers=1, attempts=2)
    d.grant("p.0", 8, pid=10)
    for i in (1, 2, 3):
        d.submit("s", env(i))
    assert sent_ids(d.dispatch()) == {"p.0": [1, 2, 3]}
    assert d.bounced("p.0") == [] and d.in_flight() == 0
    assert [e[ID] for _, e in d.queue] == [1, 2, 3]
    assert [e[ATTEMPT] for _, e in d.queue] == [2, 2, 2]
    d.dispatch()
    letters = d.bounced("p.0")
    assert [lt.env[ID] for lt in letters] == [1, 2, 3] and not d.queue
    assert "were dropped 2 times" in letters[0].error
    assert d.bounced("nobody") == []


def test_a_frame_split_in_parts_keeps_its_messages_and_drops_one_too_large() -> None:
    d, _ = make(workers=1, frame_max=8)
    d.grant("p.0", 8, pid=10)
    book = Tracker().open("a.0", 1, 1)
    d.submit_many("s", [env(i) for i in (1, 2, 3)], book)
    [frame] = d.dispatch()["p.0"]
    parts, left = d.split("p.0", frame, [[frame.envs[0]], [frame.envs[2]]])  # 2: too large
    assert [[e[ID] for e in f.envs] for f in parts] == [[1], [3]]
    assert [f.books for f in parts] == [[(book, 1)], [(book, 1)]]
    assert [(e[ID], b) for e, b in left] == [(2, book)]  # (settled for its book: see node)
    assert len({frame.key, *(f.key for f in parts)}) == 3 and d.in_flight() == 2
    d.unreachable("p.0", parts)
    assert [e[ID] for _, e in d.queue] == [1, 3] and d.in_flight() == 0


def test_tracker_reports_done_only_after_every_output_is_received() -> None:
    t = Tracker()
    a = t.open("a.0", 1, 2)
    b = t.open("b.0", 7, 1)
    assert not t.settle(a, 2, 2)
    assert not t.settle(b, 1, 1)
    assert t.received([(a, 1)]) == []
    [book] = t.received([(a, 1)])
    assert (book.sender, book.key) == ("a.0", 1)
    assert len(t) == 1
    [book] = t.received([(b, 1), (a, 1)])  # a book that is done takes no more counts
    assert (book.sender, book.key) == ("b.0", 7) and a.remaining == 0
    assert len(t) == 0


def test_tracker_without_outputs_is_done_once_every_message_is_settled() -> None:
    t = Tracker()
    book = t.open("a.0", 1, 3)
    assert not t.settle(book, 1, 0) and not t.settle(book, 1, 0)  # (async: one at a time)
    assert t.settle(book, 1, 0) and len(t) == 0


def test_tracker_waits_for_the_messages_of_a_frame_still_running() -> None:
    """An async worker settles a frame's messages one by one: the frame is DONE once the
    last is settled and every output of all of them is received, in either order."""
    t = Tracker()
    book = t.open("a.0", 5, 2)
    assert not t.settle(book, 1, 1)
    assert t.received([(book, 1)]) == []  # one message still runs
    assert not t.settle(book, 1, 1)
    assert t.received([(book, 1)]) == [book]


def test_seen_ids_window() -> None:
    seen = SeenIds(window=2)
    assert seen.first_time(1) and seen.first_time(2)
    assert not seen.first_time(1) and not seen.first_time(2)
    assert seen.first_time(3)
    assert not seen.first_time(1)  # at most 2 x window: 1 may still be known...
    assert not seen.first_time(2) and not seen.first_time(3)  # the last `window` always are
    assert seen.first_time(4)
    assert seen.first_time(1)  # ... and is not once `window` newer ones came after 2
    assert not seen.first_time(4)


def test_seen_ids_in_batches() -> None:
    seen = SeenIds(window=1000)
    assert seen.repeats([1, 2, 3]) == []
    assert seen.repeats([4, 2, 5, 4, 1]) == [1, 3, 4]  # seen before, or earlier in the batch
    assert seen.repeats([6, 6]) == [1]
    assert seen.repeats([7]) == [] and not seen.first_time(7) and seen.first_time(8)
    # the window holds across generations, batch by batch
    small = SeenIds(window=4)
    for start in range(0, 40, 3):
        batch = list(range(start, start + 3))
        assert small.repeats(batch) == []
        assert small.repeats(batch) == [0, 1, 2]  # the latest 4 are always known


# ---------------------------------------------------------------- the details mutation testing
# found unguarded (tools/mutate.py): each test below fails under a change no other test saw


def holding_a_and_b() -> Dispatcher:
    """One worker (pid 10) holding message 1 of stage 'a' and message 2 of stage 'b', with
    budgets that depend on the stage: 'a' gets 1 attempt, 'b' 3 (so code that asks for the
    wrong stage's budget is caught)."""
    d, _ = make(workers=1)
    d.max_attempts = {"a": 1, "b": 3}.__getitem__
    d.grant("p.0", 8, pid=10)
    d.submit("a", env(1))
    d.submit("b", env(2))
    d.dispatch()
    return d


def test_counters_and_views_of_a_dispatcher() -> None:
    d, _ = make(workers=2)
    assert (d.available(), d.backlog(), d.sent, d.waiting()) == (0, 0, 0, {})
    d.grant("p.0", 3, pid=10)
    d.grant("p.1", 2, pid=11)
    assert d.available() == 5
    for i in range(3):
        d.submit("x", env(i))
    d.submit("y", env(3))
    assert d.waiting() == {"x": 3, "y": 1}
    d.dispatch()
    assert d.sent == 4 and d.available() == 1 and d.in_flight() == 4
    d.submit("x", env(4))
    d.dispatch()
    assert d.sent == 5  # a running count, not the last batch's
    d.down("p.0", pid=10)  # three suspects, plus what is queued
    d.submit("x", env(5))
    assert (len(d.queue), len(d.suspects), d.backlog()) == (1, 3, 4)
    assert d.waiting() == {"x": 4}  # queued and suspects alike (y is at p.1)


def test_a_worker_with_one_credit_left_still_gets_work() -> None:
    d, _ = make(workers=2)
    d.grant("p.0", 3, pid=10)
    d.grant("p.1", 1, pid=11)
    for i in range(4):
        d.submit("s", env(i))
    out = sent_ids(d.dispatch())
    assert sorted(out["p.0"] + out["p.1"]) == [0, 1, 2, 3] and not d.queue


def test_idle_workers_take_turns() -> None:
    d, _ = make(workers=2)
    d.grant("p.0", 4, pid=10)
    d.grant("p.1", 4, pid=11)
    got = []
    for i in range(4):
        d.submit("s", env(i))
        [(worker, [msg])] = sent_ids(d.dispatch()).items()
        done_ids(d, worker, [msg])
        got.append(worker)
    assert got == ["p.0", "p.1", "p.0", "p.1"]


def test_suspects_leave_one_free_worker_while_the_dead_one_comes_back() -> None:
    """Four workers, one dies holding three, then the group of three kills another: the
    halves go out one per worker, alone, but the last free worker is kept for normal
    work."""
    d, _ = make(workers=4)
    for i in range(4):
        d.grant(f"p.{i}", 4, pid=10 + i)
    for i in range(3):
        d.submit("s", env(i))
    d.links["p.1"].up = d.links["p.2"].up = d.links["p.3"].up = False
    assert sent_ids(d.dispatch()) == {"p.0": [0, 1, 2]}
    for i in (1, 2, 3):
        d.links[f"p.{i}"].up = True
    d.down("p.0", pid=10)
    [(again, ids)] = sent_ids(d.dispatch()).items()
    assert ids == [0, 1, 2]
    d.down(again, pid=d.links[again].pid)
    d.grant("p.0", 4, pid=20)  # back: three live workers again
    out = sent_ids(d.dispatch())
    assert sorted(len(ids) for ids in out.values()) == [1, 2], out
    assert not d.suspects
    assert sum(lk.isolated for lk in d.links.values()) == 2
    free = [lk for lk in d.links.values() if lk.up and not lk.isolated]
    assert len(free) == 1 and not free[0].pending


def test_receipts_for_unknown_messages_or_workers_are_ignored() -> None:
    d, clock = make(workers=1)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    rtt = d.rtt
    [key] = keys_of(d, "p.0", [1])
    assert d.done("nobody", [key]) == 0
    assert d.failed("nobody", key, 1, "e", "t") is None
    assert d.failed("p.0", key, 99, "e", "t") is None  # not in that frame
    assert d.failed("p.0", key + 1, 1, "e", "t") is None  # not that frame
    assert d.received("nobody", [key]) == []
    assert d.done("p.0", [key + 7, key, key + 9]) == 1  # only the one it holds
    assert d.rtt == pytest.approx(0.9 * rtt)  # the sample: sent and done at the same instant
    d.submit("s", env(2))
    d.dispatch()
    clock.now += 1.0
    done_ids(d, "p.0", [2])
    assert d.rtt == pytest.approx(0.9 * 0.9 * rtt + 0.1 * 1.0)


def test_failures_are_charged_against_their_own_stage() -> None:
    d = holding_a_and_b()
    letter = fail_id(d, "p.0", 1, "a: boom", "tb-a")
    assert letter is not None
    assert (letter.stage, letter.env[ID], letter.error, letter.traceback) == (
        "a", 1, "a: boom", "tb-a")
    assert fail_id(d, "p.0", 2, "b: boom", "tb-b") is None  # b has attempts left


def test_a_grant_without_a_pid_or_with_the_same_one_changes_nothing_held() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 4)  # no pid known yet
    d.grant("p.0", 4, pid=10)  # the first pid: not a new incarnation
    d.submit("s", env(1))
    d.dispatch()
    assert d.grant("p.0", 8) == [] and d.grant("p.0", 8, pid=10) == []
    assert d.in_flight() == 1 and not d.suspects and d.links["p.0"].window == 8


def test_down_without_a_pid_takes_the_worker_down() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    d.down("p.0")
    link = d.links["p.0"]
    assert (link.up, link.window, link.isolated, len(link.pending)) == (False, 0, False, 0)
    assert [e[ID] for _, e in d.suspects] == [1]


def test_down_with_culprits_fails_them_and_sends_the_rest_again_uncharged() -> None:
    d, _ = make(workers=1)
    d.grant("p.0", 8, pid=10)
    for i in (1, 2, 3, 4):
        d.submit("s", env(i))
    d.dispatch()
    letters = d.down("p.0", pid=10, culprits={2, 4}, why="ran over")
    assert [(lt.stage, lt.env[ID], lt.error, lt.status) for lt in letters] == [
        ("s", 2, "ran over", 504), ("s", 4, "ran over", 504)]
    assert [e[ID] for _, e in d.queue] == [1, 3] and not d.suspects
    assert [e[ATTEMPT] for _, e in d.queue] == [1, 1]
    assert d.down("p.0", pid=10, culprits=set()) == []  # (nothing held any more)
    d.grant("p.0", 8, pid=11)
    d.dispatch()
    [letter] = d.down("p.0", pid=11, culprits={1})
    assert letter.error == ""


def test_a_suspect_alone_is_charged_by_its_own_stage_budget() -> None:
    d = holding_a_and_b()
    d.down("p.0", pid=10)
    d.grant("p.0", 4, pid=11)
    assert sent_ids(d.dispatch()) == {"p.0": [1, 2]}  # one group
    assert d.down("p.0", pid=11) == []  # halved
    d.grant("p.0", 4, pid=11)
    assert sent_ids(d.dispatch()) == {"p.0": [1]}  # the halves go out in their order
    [letter] = d.down("p.0", pid=11)  # a: 1 attempt
    assert (letter.stage, letter.env[ID]) == ("a", 1)
    for pid in (12, 13):
        d.grant("p.0", 4, pid=pid)
        assert sent_ids(d.dispatch()) == {"p.0": [2]}
        assert d.down("p.0", pid=pid) == []  # b: 3 attempts
    d.grant("p.0", 4, pid=14)
    d.dispatch()
    [letter] = d.down("p.0", pid=14)
    assert (letter.stage, letter.env[ID], letter.env[ATTEMPT]) == ("b", 2, 4)


def test_bounced_messages_are_charged_by_their_own_stage() -> None:
    d = holding_a_and_b()
    [letter] = d.bounced("p.0")
    assert (letter.stage, letter.env[ID]) == ("a", 1)
    assert [(s, e[ID]) for s, e in d.queue] == [("b", 2)]


def test_a_worker_is_stalled_only_past_its_limit() -> None:
    d, clock = make(workers=1)
    d.grant("p.0", 4, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    limit = max(d.STALL_FLOOR, d.STALL_FACTOR * d.rtt)
    clock.now += limit
    assert not d.stalled(d.links["p.0"], clock.now)
    clock.now += 0.001
    assert d.stalled(d.links["p.0"], clock.now)


def test_an_unreachable_worker_offers_no_credit_and_keeps_suspects_apart() -> None:
    d, _ = make(workers=2)
    d.grant("p.0", 4, pid=10)
    d.grant("p.1", 4, pid=11)
    d.submit("s", env(1))
    d.submit("s", env(2))
    d.links["p.1"].up = False
    d.dispatch()
    d.down("p.0", pid=10)
    d.links["p.1"].up = True
    d.grant("p.0", 4, pid=12)
    out = d.dispatch()  # the suspects, as a group alone on a worker
    [(worker, batch)] = [(w, b) for w, b in out.items() if len(b) == 2][:1]
    assert d.links[worker].isolated
    d.unreachable(worker, batch)
    link = d.links[worker]
    assert (link.up, link.isolated, link.available()) == (False, False, 0)
    assert [e[ID] for _, e in d.suspects] == [1, 2] and list(d.groups) == [2]


def test_outputs_carry_their_book_through_frames_receipts_and_a_dead_worker() -> None:
    """Outputs of two frames (two books) share the frames they go out in; each receipt
    counts each book's messages once, and outputs given back by a dead worker before their
    receipt still count for their book when they are received at last."""
    t = Tracker()
    one, two = t.open("a.0", 1, 1), t.open("a.0", 2, 1)
    d, _ = make(workers=1, frame_max=3)
    d.grant("p.0", 8, pid=10)
    d.submit_many("s", [env(1), env(2)], one)
    d.submit_many("s", [env(3), env(4)], two)
    assert not t.settle(one, 1, 2) and not t.settle(two, 1, 2)
    first, _ = d.dispatch()["p.0"]
    assert [(b.key, n) for b, n in first.books] == [(1, 2), (2, 1)]
    assert t.received(d.received("p.0", [first.key])) == [one]  # its two, and one of two's
    assert d.received("p.0", [first.key]) == []  # (a receipt that came twice)
    d.down("p.0", pid=10)  # the second frame was not received: its message waits again
    d.grant("p.0", 8, pid=11)
    frames = d.dispatch()["p.0"]
    assert [e[ID] for f in frames for e in f.envs] == [1, 2, 3, 4]
    books = [b for f in frames for b, _ in f.books]
    assert books == [two]  # (1, 2, 3 were received before)
    assert t.received(d.received("p.0", [f.key for f in frames])) == [two] and len(t) == 0


def test_an_output_that_is_dead_lettered_is_settled_for_its_book() -> None:
    d, _ = make(workers=1, attempts=1)
    t = Tracker()
    book = t.open("a.0", 1, 1)
    d.submit_many("s", [env(1)], book)
    assert not t.settle(book, 1, 1)
    d.grant("p.0", 8, pid=10)
    d.dispatch()
    d.down("p.0", pid=10)
    d.grant("p.0", 8, pid=11)
    d.dispatch()
    [letter] = d.down("p.0", pid=11)  # it killed its worker alone: out of attempts
    assert letter.book is book
    assert t.received([(letter.book, 1)]) == [book]


# ---------------------------------------------------------------- frames

def test_messages_go_in_frames_of_one_stage_and_at_most_frame_max() -> None:
    d, _ = make(workers=1, frame_max=3)
    d.grant("p.0", 16, pid=10)
    for i, stage in enumerate("aaaaabba"):
        d.submit(stage, env(i))
    frames = d.dispatch()["p.0"]
    assert [(f.stage, [e[ID] for e in f.envs]) for f in frames] == [
        ("a", [0, 1, 2]), ("a", [3, 4]), ("b", [5, 6]), ("a", [7])]
    assert len({f.key for f in frames}) == 4 and d.in_flight() == 8
    assert d.links["p.0"].available() == 8


def test_one_receipt_and_one_done_settle_a_whole_frame() -> None:
    d, _ = make(workers=1, frame_max=64)
    d.grant("p.0", 64, pid=10)
    t = Tracker()
    book = t.open("a.0", 1, 10)
    d.submit_many("s", [env(i) for i in range(10)], book)
    assert not t.settle(book, 10, 10)
    [frame] = d.dispatch()["p.0"]
    assert d.received("p.0", [frame.key]) == [(book, 10)]  # for the tracker
    assert d.received("p.0", [frame.key]) == []  # a receipt that came twice: once
    assert d.done("p.0", [frame.key]) == 10
    assert d.in_flight() == 0 and d.links["p.0"].available() == 64


def test_a_failed_message_leaves_its_frame_and_the_rest_are_done_with_it() -> None:
    d, _ = make(workers=1, attempts=3, frame_max=64)
    d.grant("p.0", 64, pid=10)
    for i in range(4):
        d.submit("s", env(i))
    [frame] = d.dispatch()["p.0"]
    assert d.failed("p.0", frame.key, 2, "s: ValueError: x", "tb") is None  # retried
    assert [e[ID] for _, e in d.queue] == [2] and d.in_flight() == 3
    assert d.failed("p.0", frame.key, 2, "s: ValueError: x", "tb") is None  # (again: gone)
    assert d.done("p.0", [frame.key]) == 3
    [again] = d.dispatch()["p.0"]
    assert [(e[ID], e[ATTEMPT]) for e in again.envs] == [(2, 2)]


def five_sent_in_frames_of_two() -> tuple[Dispatcher, list[Frame]]:
    """Messages 0-4 sent to p.0 in frames of two: [0, 1], [2, 3], [4]."""
    d, _ = make(workers=1, frame_max=2)
    d.grant("p.0", 8, pid=10)
    for i in range(5):
        d.submit("s", env(i))
    frames = d.dispatch()["p.0"]
    assert [[e[ID] for e in f.envs] for f in frames] == [[0, 1], [2, 3], [4]]
    return d, frames


def test_a_dead_worker_gives_back_every_message_of_its_frames_in_order() -> None:
    d, frames = five_sent_in_frames_of_two()
    assert d.done("p.0", [frames[1].key]) == 2  # frames are done in any order
    assert d.down("p.0", pid=10) == []
    assert [e[ID] for _, e in d.suspects] == [0, 1, 4] and list(d.groups) == [3]


def test_an_unreachable_worker_takes_back_only_the_frames_not_sent() -> None:
    d, frames = five_sent_in_frames_of_two()
    d.unreachable("p.0", frames[1:])  # the first went out
    assert [e[ID] for _, e in d.queue] == [2, 3, 4] and d.in_flight() == 2


def test_a_worker_is_charged_only_for_the_messages_it_was_sent() -> None:
    """Credit counts what went out, even where the books of suspects (their group sizes)
    claim more than is there."""
    d, _ = make(workers=1, frame_max=8)
    d.grant("p.0", 8, pid=10)
    d.submit("s", env(1))
    d.dispatch()
    d.down("p.0", pid=10)
    d.groups[0] = 5  # (one suspect, a group of 5 claimed)
    d.grant("p.0", 8, pid=11)
    assert sent_ids(d.dispatch()) == {"p.0": [1]}
    assert d.in_flight() == 1 and d.sent == 2 and d.links["p.0"].available() == 7


def test_each_sender_keys_its_frames_from_a_random_start() -> None:
    """A restarted sender must not reuse its predecessor's keys (a worker may still answer
    those); keys are at least 2**40, so that every frame's key packs to the same size."""
    firsts = set()
    for _ in range(3):
        d = Dispatcher("p", ["p.0"], lambda _s: 3)
        d.grant("p.0", 4, pid=10)
        d.submit("s", env(1))
        [frame] = d.dispatch()["p.0"]
        assert frame.key >= 1 << 40
        firsts.add(frame.key)
    assert len(firsts) == 3


# ---------------------------------------------------------------- retry: what may run twice

def once_env(i: int) -> list[object]:
    """A message of a request that may not run twice (a POST): envelope.ONCE in REQUEST."""
    from seda.engine.wire import ONCE

    return [i, "acceptor.0", 1, 0.0, f"item {i}", i | ONCE, 1]


def make_retry(policy: str, workers: int = 1) -> Dispatcher:
    from seda.engine.wire import ONCE, REQUEST

    def rerun(stage: str, env: list[object]) -> bool:
        return policy == "always" or (policy == "idempotent"
                                      and not env[REQUEST] & ONCE)  # type: ignore[operator]

    return Dispatcher("p", [f"p.{i}" for i in range(workers)], lambda _s: 3, Clock(),
                      rerun=rerun, frame_max=1)


@pytest.mark.parametrize(("policy", "once_again", "plain_again"), [
    ("idempotent", False, True), ("always", True, True), ("never", False, False)])
def test_a_handler_failure_runs_again_only_what_may_run_twice(
        policy: str, once_again: bool, plain_again: bool) -> None:
    d = make_retry(policy)
    d.grant("p.0", 8, pid=10)
    d.submit("s", once_env(1))
    d.submit("s", env(2))
    d.dispatch()
    failed = {i: fail_id(d, "p.0", i, "s: ValueError: x", "tb") for i in (1, 2)}
    assert (failed[1] is None, failed[2] is None) == (once_again, plain_again)
    for letter in filter(None, failed.values()):
        assert (letter.status, letter.error, letter.env[ATTEMPT]) == (500, "s: ValueError: x", 2)
    assert sorted(e[ID] for _, e in d.queue) == [i for i, again in
                                                 ((1, once_again), (2, plain_again)) if again]


def test_a_dead_worker_fails_what_may_not_run_twice_with_a_502() -> None:
    d = make_retry("idempotent")
    d.grant("p.0", 8, pid=10)
    for e in (once_env(1), env(2), once_env(3)):
        d.submit("s", e)
    d.dispatch()
    letters = d.down("p.0", pid=10)
    assert [(lt.env[ID] & 0xFF, lt.status, lt.env[ATTEMPT]) for lt in letters] == [
        (1, 502, 2), (3, 502, 2)]
    assert letters[0].error == ("worker p.0 died while it held it; not run again (its request "
                                "may not run twice: see the stage's retry)")
    assert [e[ID] for _, e in d.suspects] == [2] and not d.queue  # the GET goes out again


def test_a_timed_out_call_is_a_504_and_its_neighbours_that_may_not_run_twice_502() -> None:
    d = make_retry("idempotent")
    d.grant("p.0", 8, pid=10)
    for e in (once_env(1), env(2), once_env(3), env(4)):
        d.submit("s", e)
    d.dispatch()
    letters = d.down("p.0", pid=10, culprits={once_env(1)[0]}, why="ran over")
    assert [(lt.env[ID] & 0xFF, lt.status) for lt in letters] == [(1, 504), (3, 502)]
    assert all(lt.env[ATTEMPT] == 2 for lt in letters)
    assert [e[ID] for _, e in d.queue] == [2, 4]


def test_dropped_frames_fail_what_may_not_run_twice() -> None:
    d = make_retry("idempotent")
    d.grant("p.0", 8, pid=10)
    d.submit("s", once_env(1))
    d.submit("s", env(2))
    d.dispatch()
    [letter] = d.bounced("p.0")
    assert (letter.env[ID] & 0xFF, letter.status) == (1, 502)
    assert [(e[ID], e[ATTEMPT]) for _, e in d.queue] == [(2, 2)]
