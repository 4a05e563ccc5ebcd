"""The wire as documented: the one table of kinds and paths, the envelope, the accept point."""

from __future__ import annotations

import threading

import pytest

from hefl.errors import DuplicateMessage, ProtocolError
from hefl.node.aggregation import AcceptPoint
from hefl.node.wire import ROUTES, Envelope, Kind, kind_at


def test_paths_stay_as_documented() -> None:
    assert {k.value: (r.method, r.path) for k, r in ROUTES.items()} == {
        "begin": ("POST", "/begin"),
        "update": ("POST", "/update"),
        "global": ("POST", "/global"),
        "metrics": ("POST", "/metrics"),
        "fail": ("POST", "/fail"),
        "health": ("GET", "/health"),
        "config": ("POST", "/config"),
        "start": ("POST", "/start"),
        "status": ("GET", "/status"),
        "log": ("GET", "/log/<experiment>"),
        "end": ("POST", "/end/<experiment>"),
        "flush": ("POST", "/flush"),
        "page": ("GET", "/"),
    }
    assert Kind.LOG.route.url_path("exp-1") == "/log/exp-1"
    assert {
        k: ROUTES[k].direction
        for k in (Kind.BEGIN, Kind.UPDATE, Kind.GLOBAL, Kind.METRICS, Kind.FAIL)
    } == {
        Kind.BEGIN: "down",
        Kind.UPDATE: "up",
        Kind.GLOBAL: "down",
        Kind.METRICS: "control",
        Kind.FAIL: "control",
    }
    assert (
        kind_at("/update") is Kind.UPDATE
        and kind_at("/health") is None
        and kind_at("/nope") is None
    )


def test_envelope_round_trips_through_headers() -> None:
    e = Envelope("exp-1", 4, "10.10.1.3", samples=180, contributors=2)
    assert Envelope.from_headers(e.headers()) == e
    with pytest.raises(ProtocolError, match="X-Hefl-Round: '-1' is not a non-negative integer"):
        Envelope.from_headers({**e.headers(), "X-Hefl-Round": "-1"})
    with pytest.raises(ProtocolError, match="missing header X-Hefl-Sender"):
        Envelope.from_headers({k: v for k, v in e.headers().items() if k != "X-Hefl-Sender"})


def test_accept_point_takes_each_key_once_and_frees_it_when_the_work_fails() -> None:
    point = AcceptPoint()
    with pytest.raises(ValueError), point.reserve("k", "k"):
        raise ValueError("payload does not load")
    assert not point.taken("k")  # a corrected retry is taken
    with point.reserve("k", "k"):
        pass
    with pytest.raises(DuplicateMessage, match="k already received"), point.reserve("k", "k"):
        pass


def test_accept_point_under_contention_admits_exactly_one() -> None:
    point, wins = AcceptPoint(), []
    barrier = threading.Barrier(16)

    def claim() -> None:
        barrier.wait()
        try:
            with point.reserve(("round", 3), "round 3"):
                wins.append(1)
        except DuplicateMessage:
            pass

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [1]
