"""The HTTP endpoint's read-ahead (bot/serve/http.py): when a request is all there, so a thread
may have it, and what the thread then reads back. On a socket pair, with no server."""

from __future__ import annotations

import socket
import time

import pytest

from bot.serve.http import HEADERS_AHEAD, Connection, Limits, ReadTimeout

LIMITS = Limits(max_body=1000, header_timeout=5.0, body_timeout=10.0)
HEAD = b"POST /slack/events HTTP/1.1\r\nHost: bot\r\n"


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    conn = Connection.adopt(ours, LIMITS)
    yield conn, theirs
    conn.close()
    theirs.close()


def test_a_request_is_ready_once_its_headers_and_announced_body_are_there(pair):
    conn, _ = pair
    now = time.monotonic()
    assert not conn.took(HEAD + b"Content-Le", now)
    assert conn.deadline == pytest.approx(now + LIMITS.header_timeout)  # from the first byte
    assert not conn.took(b"ngth: 5\r\n\r", now)
    assert not conn.took(b"\nab", now + 1)  # the headers ended across two reads
    assert conn.deadline == pytest.approx(now + 1 + LIMITS.body_timeout)  # now the body's deadline
    assert conn.took(b"cde", now + 2)
    conn.hand_over()
    request = HEAD + b"Content-Length: 5\r\n\r\nabcde"
    assert conn.recv(10) + conn.recv(1 << 20) == request  # a thread reads it back, in pieces
    assert conn.buffered == 0


@pytest.mark.parametrize("headers", [
    b"",  # no length: 411
    b"Content-Length: 1001\r\n",  # over the cap: 413
    b"Content-Length: -1\r\n",  # 400
    b"Content-Length: 5\r\nContent-Length: 5\r\n",  # 400
    b"Transfer-Encoding: chunked\r\n",  # 411
    b"Content-Length: 5\r\nExpect: 100-continue\r\n",  # gunicorn answers the expectation
])
def test_what_is_refused_from_its_headers_goes_to_a_thread_before_any_body(pair, headers):
    conn, _ = pair
    assert conn.took(HEAD + headers + b"\r\n", time.monotonic())


def test_headers_too_long_to_read_ahead_are_left_to_gunicorns_limits(pair):
    conn, _ = pair
    assert not conn.took(HEAD + b"X: " + b"a" * (HEADERS_AHEAD - 100), time.monotonic())
    assert conn.took(b"a" * 200, time.monotonic())


def test_a_thread_reading_past_what_was_read_ahead_waits_until_the_deadline_only(pair):
    conn, theirs = pair
    conn.took(HEAD + b"Content-Length: 5\r\n\r\nab", time.monotonic())
    conn.hand_over()
    conn.recv(1 << 20)
    conn.setblocking(True)
    conn.deadline = time.monotonic() + 0.2
    theirs.sendall(b"c")
    assert conn.recv(10) == b"c"
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        conn.recv(10)  # the client sends nothing more
    assert time.monotonic() - started < 1.0
    with pytest.raises(ReadTimeout):
        conn.recv(10)  # past the deadline: at once


def test_what_was_read_ahead_and_not_parsed_is_given_back(pair):
    conn, _ = pair
    conn.took(HEAD + b"Content-Length: 1\r\n\r\nxGET /healthz HTTP/1.1\r\n", time.monotonic())
    conn.hand_over()
    first = conn.recv(len(HEAD) + len(b"Content-Length: 1\r\n\r\nx"))
    assert first.endswith(b"x")
    assert conn.leftover() == b"GET /healthz HTTP/1.1\r\n"
