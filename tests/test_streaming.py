"""Bodies read part by part as they arrive (hefl.node.body.Incoming): parts checked before they are
read, a second pass from the spool on disk, a part refused in the middle of a large update taken
back out of the total to the bit, and updates encrypted as they are sent."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hefl.crypto import HeParams, load_keyless, load_secret, make_scheme, read_keyless
from hefl.crypto.frame import frame, unframe
from hefl.errors import NoSpace, ProtocolError, TooLarge
from hefl.node.body import AHEAD, Incoming, spool_dir

TOLERANCE = {"ckks": 1e-4, "bfv": 8 * 2 / (2**16 - 1)}  # bfv: one quantization step per client


def schemes(name: str, size: int, key_dirs: dict[str, Path]) -> tuple[Any, Any]:
    """(a client's scheme, a switch's scheme) of one experiment."""
    enc, key_dir = HeParams(scheme=name), key_dirs[name]
    return (
        make_scheme(enc, size, load_secret(enc, key_dir)),
        make_scheme(enc, size, load_keyless(enc, read_keyless(enc, key_dir))),
    )


def reader(body: bytes, asked: list[int] | None = None) -> Callable[[int], bytes]:
    """A socket's `read` over `body`, in pieces of 1000 bytes at most (what asked is kept)."""
    stream = io.BytesIO(body)

    def read(n: int) -> bytes:
        if asked is not None:
            asked.append(n)
        return stream.read(min(n, 1000))

    return read


OPEN: list[Incoming] = []


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    """Every body a test made is closed after it (its spool removed)."""
    yield
    while OPEN:
        OPEN.pop().close()


def incoming(
    body: bytes, tmp_path: Path, asked: list[int] | None = None, limit: int = 1 << 30
) -> Incoming:
    made = Incoming(reader(body, asked), spool_dir(tmp_path), limit)
    OPEN.append(made)
    return made


def test_parts_arrive_as_read_and_a_second_pass_reads_the_spool(tmp_path: Path) -> None:
    parts = [bytes([i]) * (700 * i + 1) for i in range(5)]
    body = incoming(frame(parts), tmp_path)
    first = body.parts(5)
    assert next(first) == parts[0] and body.received < len(frame(parts))  # not all read yet
    assert list(first) == parts[1:] and body.done and len(body) == len(frame(parts))
    assert list(body.parts(5)) == parts  # again, from the spool
    assert body.path.read_bytes() == frame(parts)
    body.close()
    assert not body.path.exists()


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda b: b[:-10], "body ends inside ciphertext 2"),
        (lambda b: b + b"x", "bytes after its 3 ciphertexts"),
        (lambda b: b"HEF1" + b[4:], "not a framed ciphertext list"),
        (lambda b: b[:4] + b"\x02" + b[5:], "holds 2 ciphertexts, expected 3"),
    ],
)
def test_a_body_cut_short_or_malformed_is_refused_in_one_line(
    tmp_path: Path, cut: Callable[[bytes], bytes], match: str
) -> None:
    body = incoming(cut(frame([b"a" * 100, b"b" * 100, b"c" * 100])), tmp_path)
    with pytest.raises(ProtocolError, match=match):
        list(body.parts(3))
    body.close()


def test_a_part_longer_than_a_ciphertext_is_refused_before_it_is_read(tmp_path: Path) -> None:
    asked: list[int] = []
    body = incoming(frame([b"a" * 10, b"b" * 500_000]), tmp_path, asked)
    with pytest.raises(ProtocolError, match="ciphertext 1 is 500000 bytes.* at most 4096"):
        list(body.parts(2, limit=4096))
    # no more than one read-ahead of 64 KiB was asked for: the part itself never was
    assert body.received <= AHEAD and len(asked) == 1 and max(asked) <= AHEAD


def test_a_body_past_the_limit_is_too_large(tmp_path: Path) -> None:
    body = incoming(frame([b"a" * 5000]), tmp_path, limit=3000)
    with pytest.raises(TooLarge):
        list(body.parts(1))


@pytest.mark.parametrize("name", ["ckks", "bfv"])
def test_a_bad_part_in_the_middle_of_a_large_body_is_refused_with_the_total_unchanged(
    name: str, key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """An update of 40 ciphertexts read as it arrives; ciphertext 20 is junk: the 20 already added
    are taken back out (read again from the spool), to the bit; a truncated body likewise; the
    genuine update then adds."""
    chunks = 40
    size = chunks * (2048 if name == "ckks" else 8192)
    client, switch = schemes(name, size, key_dirs)
    rng = np.random.default_rng(5)
    a, b = rng.uniform(-1, 1, size), rng.uniform(-1, 1, size)
    total = switch.load_into(None, client.encrypt(a))
    before = switch.serialize(total)
    parts = list(unframe(client.encrypt(b), chunks))
    bad = [*parts[:20], b"\x00" * len(parts[20]), *parts[21:]]
    for body, match in (
        (frame(bad), "ciphertext 20"),
        (frame(parts)[: -len(parts[-1]) // 2], "body ends inside ciphertext 39"),
    ):
        arriving = incoming(body, tmp_path)
        with pytest.raises(ProtocolError, match=match):
            switch.load_into(total, arriving)
        assert switch.serialize(total) == before
        arriving.close()
    total = switch.load_into(total, incoming(frame(parts), tmp_path))
    got = client.decrypt(client.load(switch.serialize(total)), 2)
    np.testing.assert_allclose(got, a + b, atol=TOLERANCE[name])


def test_an_update_streamed_as_it_is_encrypted_adds_like_one_made_whole(
    key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """`stream` encrypts and serializes one ciphertext at a time; what it sends loads and adds as
    an update made at once would, and a second call (a retry) encrypts anew."""
    size = 5 * 2048
    client, switch = schemes("ckks", size, key_dirs)
    values = np.random.default_rng(2).uniform(-1, 1, size)
    sent = b"".join(client.stream(values))
    again = b"".join(client.stream(values))
    assert sent[:8] == client.encrypt(values)[:8] and sent != again  # fresh randomness
    total = switch.load_into(None, incoming(sent, tmp_path))
    total = switch.load_into(total, again)
    got = client.decrypt(client.load(switch.serialize(total)), 2)
    np.testing.assert_allclose(got, 2 * values, atol=2 * TOLERANCE["ckks"])
    out = io.BytesIO()
    switch.write(total, out)
    assert np.allclose(client.decrypt(client.load(out.getvalue()), 2), 2 * values, atol=1e-3)


def test_a_plain_body_is_checked_whole_before_any_of_it_is_added(tmp_path: Path) -> None:
    from hefl.crypto.plain import WIRE, PlainScheme

    scheme = PlainScheme(600_000, clip=1.0)
    good = np.full(600_000, 0.5, dtype=WIRE)
    total = scheme.load_into(None, incoming(good.tobytes(), tmp_path))
    bad = good.copy()
    bad[400_000] = np.nan  # in the last block
    with pytest.raises(ProtocolError, match="1 non-finite"):
        body = incoming(bad.tobytes(), tmp_path)
        scheme.check_sum(body, 1)
    with pytest.raises(ProtocolError, match="payload is 2399996 bytes"):
        scheme.load_into(total, incoming(good.tobytes()[:-4], tmp_path))
    assert np.all(total == 0.5)
    total = scheme.load_into(total, incoming(good.tobytes(), tmp_path))
    assert np.all(total == 1.0)


def test_a_body_that_cannot_be_spooled_is_refused_as_no_space(tmp_path: Path) -> None:
    """A full disk (here: a spool file that refuses writes) is a 507 naming the reason, not a 500
    with a traceback; nothing is left behind."""
    body = incoming(frame([b"a" * 100_000]), tmp_path)

    class Full(io.BufferedWriter):
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

    body._out.close()
    body._out = Full(io.FileIO(body.path, "wb"))  # type: ignore[assignment]
    with pytest.raises(NoSpace, match="cannot spool the body: No space left on device") as err:
        list(body.parts(1))
    assert err.value.status_code == 507
    body.close()
    assert not body.path.exists()


def test_a_deadline_cuts_an_update_still_arriving_and_takes_it_back_out(
    key_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """With a round deadline, a child's ckks update that is still arriving when the parent flushes
    (its sender stalled half way) holds nothing up: the flush cuts it (as the HTTP layer shuts its
    socket), its parts are taken back out of the total, its sender is told the round closed
    (422), and the switch sends up at once the sum of the update that came whole."""
    import threading
    import time

    from hefl.config import parse_config
    from hefl.errors import OutOfWindow
    from hefl.modelspec import param_count
    from hefl.node.nodes import Parts, role_class
    from hefl.node.runlog import RunLog
    from hefl.node.transport import TrafficMeter
    from hefl.node.wire import Envelope, Kind
    from tests.helpers import AGG, C0, C1, EXP, S0, FakeTransport, InlineWorker, tree_config

    raw = tree_config(clients=2, leaves=1, spine=False, rounds=2, encryption={"scheme": "ckks"})
    raw["network"] = {"round_deadline_s": 60}
    raw["encryption"]["key_dir"] = str(key_dirs["ckks"])
    cfg = parse_config(raw)
    size = param_count(cfg.model, cfg.dataset)
    client, switch_scheme = schemes("ckks", size, key_dirs)
    runlog = RunLog(tmp_path / "s0.json", S0, "switch", EXP)

    class Reading(FakeTransport):
        """Keeps each body as sent (a file body is removed once sent)."""

        def send(self, peer: str, kind: Kind, env: Envelope, body: Any = b"") -> None:
            data = body if isinstance(body, bytes | bytearray) else body.path.read_bytes()
            super().send(peer, kind, env, bytes(data))

    transport = Reading()
    meter = TrafficMeter(runlog, EXP, cfg.rounds, cfg.nodes)
    spool = spool_dir(tmp_path, "s0")
    parts = Parts(transport, switch_scheme, runlog, meter, InlineWorker("t"), spool=spool)
    switch = role_class("switch")(cfg, S0, EXP, parts)
    switch.start()
    switch.on_begin(Envelope(EXP, 0, AGG), b"")
    whole = client.encrypt(np.full(size, 0.25))
    switch.on_update(Envelope(EXP, 0, C1, 20, 1, 1 << 1), whole)  # C1's came whole

    stalled, cut = threading.Event(), threading.Event()
    body = frame(list(unframe(client.encrypt(np.full(size, 0.5)), client.chunks)))
    half = len(body) // 2
    sent = [0]

    def trickle(n: int) -> bytes:  # half the body, then nothing until the socket is shut
        if sent[0] >= half:
            stalled.set()
            cut.wait(30)
            return b""
        piece = body[sent[0] : min(half, sent[0] + n)]
        sent[0] += len(piece)
        return piece

    arriving = incoming(b"", tmp_path)
    arriving._read = trickle
    arriving.on_cancel = cut.set
    answer: list[BaseException] = []

    def update() -> None:
        try:
            switch.on_update(Envelope(EXP, 0, C0, 10, 1, 1 << 0), arriving)
        except BaseException as exc:
            answer.append(exc)

    thread = threading.Thread(target=update)
    thread.start()
    assert stalled.wait(30)
    started = time.monotonic()
    done = threading.Event()
    switch.flush_round(0, done)
    assert done.is_set() and time.monotonic() - started < 5
    thread.join(30)
    assert len(answer) == 1 and isinstance(answer[0], OutOfWindow), answer
    (up,) = [m for m in transport.sent if m[1] is Kind.UPDATE]
    assert (up[2].contributors, up[2].members) == (1, 1 << 1)
    got = client.decrypt(client.load(up[3]), 1)
    np.testing.assert_allclose(got, np.full(size, 0.25), atol=TOLERANCE["ckks"])
    assert not list(spool.iterdir())  # the sum's file went once sent
    switch.close()
    assert not spool.exists()  # a retired node's spool folder goes, with anything left in it


def test_a_body_says_once_when_its_end_was_read(tmp_path: Path) -> None:
    """`on_done` (the HTTP layer counts the body's bytes there) comes once the body's end was read,
    before whoever read it acts on it: a client's report of the round's bytes holds its global
    result's, however fast it applies it."""
    parts = [b"a" * 3000, b"b" * 3000]
    body = incoming(frame(parts), tmp_path)
    seen: list[int] = []
    body.on_done = lambda: seen.append(len(body))
    reading = body.parts(2)
    assert next(reading) == parts[0] and seen == []
    assert list(reading) == parts[1:] and seen == [len(frame(parts))]
    assert list(body.parts(2)) == parts and seen == [len(frame(parts))]  # from the spool: no more


def test_a_kept_body_is_a_file_with_its_first_part(tmp_path: Path) -> None:
    """`keep` (a switch relays a global result from it) reads the rest of the body and hands its
    spool on whole, framed or not (a plaintext body has no first part), and asking for the first
    part afterwards does not touch the closed spool."""
    framed = incoming(frame([b"x" * 5000, b"y" * 10]), tmp_path)
    kept = framed.keep()
    assert kept.path.read_bytes() == frame([b"x" * 5000, b"y" * 10])
    assert kept.first_part == b"x" * 5000 == framed.first_part
    plain = incoming(b"\0" * 70_000, tmp_path)
    kept_plain = plain.keep()
    assert kept_plain.size == 70_000 and kept_plain.first_part is None and plain.first_part is None
    kept.remove()
    kept_plain.remove()
