"""The front door's request book, sans-IO: reply order per connection, the book of requests
in the graph, deadlines with an injected time."""

from __future__ import annotations

from collections import deque

from seda.engine.front import Book, Slot, server_answer, take_ready, wants_close


def slot(request: object = None, done: bool = False, **kw: object) -> Slot:
    return Slot(None, request, b"out", done=done, **kw)  # type: ignore[arg-type]


def test_replies_leave_in_request_order_and_wait_for_the_ones_before() -> None:
    first, second, third = slot(), slot(done=True), slot(done=True)
    order = deque([first, second, third])
    assert take_ready(order) == [] and len(order) == 3  # the head is not answered yet
    first.done = True
    assert take_ready(order) == [first, second, third] and not order


def test_a_file_or_a_close_ends_what_goes_out_at_once() -> None:
    a, f, b = slot(done=True), slot(done=True, file=(9, 100)), slot(done=True)
    order = deque([a, f, b])
    assert take_ready(order) == [a, f] and list(order) == [b]  # b waits for the file
    c = slot(done=True, close=True)
    order = deque([c, slot(done=True)])
    assert take_ready(order) == [c] and len(order) == 1


def test_the_book_settles_each_request_once() -> None:
    book = Book()
    s = slot()
    book.enter(s, 7, expires=10.0)
    assert len(book) == 1 and s.rid == 7
    assert book.settle(7) is s
    assert book.settle(7) is None  # a duplicate result is late
    assert book.expired(11.0) == []  # answered already: its deadline passes quietly


def test_deadlines_expire_in_arrival_order_and_only_once() -> None:
    book = Book()
    slots = [slot() for _ in range(3)]
    for i, s in enumerate(slots):
        book.enter(s, i + 1, expires=10.0 + i)
    assert book.expired(9.9) == []
    assert book.expired(11.0) == slots[:2]
    assert book.settle(1) is None  # a result after its 504 is late
    assert book.expired(11.0) == [] and len(book) == 1
    assert book.settle(3) is slots[2]


def test_a_server_answer_keeps_the_connection_unless_the_request_asked_to_close() -> None:
    keep, close = slot({"keep_alive": True}), slot({"keep_alive": False})
    server_answer(keep, b"503")
    server_answer(close, b"503")
    assert (keep.out, keep.done, keep.close) == (b"503", True, False)
    assert close.close and wants_close(close) and not wants_close(slot(["GET", "k"]))
