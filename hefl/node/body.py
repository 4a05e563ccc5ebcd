"""Large round-message bodies that never sit whole in memory: one arriving from the socket
(`Incoming`, spooled to disk as it is read), one sent from a file (`FileBody`), and one made part by
part as it goes out (`PartStream`: a client's update, encrypted as it is sent).

An update of an 11M-parameter model is about 270 MB under CKKS: a node that read it whole, or held
one per child, would not fit a machine. An `Incoming` body is read part by part as the node asks
for them (hefl.crypto.frame.read_parts: each part's length is checked before it is read), and every
byte read is appended to a spool file under the node's log folder (on disk, not tmpfs). A second
pass over the parts reads the spool back: that is how an adder takes out the parts it added when a
later part is refused, and how a switch relays a global result to each child without holding it.
The spool goes when the request ends, unless the node keeps it (`keep`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from hefl.crypto.frame import HEAD, LENGTH, MAGIC, NO_LIMIT, read_parts
from hefl.errors import NoSpace, ProtocolError, TooLarge

BLOCK = 1 << 18  # what a file body sends per write: 256 KiB (see transport._BodyReader)
SPOOL = ".spool"  # under a node's log folder
AHEAD = 1 << 20  # the least an Incoming body asks the wire for
FIRST_PART_MOST = 16 << 20  # the most of a file body's first part read for its form


def spool_dir(log_dir: Path, node: str = "") -> Path:
    """Where this process spools bodies: a private folder of its own under the log folder (nodes
    started together may share a log folder, even across machines: the host's name is in it);
    `node`: a node's own folder in it (removed when the node is retired)."""
    folder = log_dir / SPOOL / f"{_host()}-{os.getpid()}"
    if node:
        folder /= node
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(log_dir / SPOOL, 0o700)
    except OSError as exc:
        raise NoSpace(f"cannot make the spool folder {folder}: {exc.strerror or exc}") from None
    return folder


def clear_spools(log_dir: Path) -> None:
    """Remove what processes that are gone left in their spool folders (a node killed while it
    held a body); this process's own folder starts empty."""
    root = log_dir / SPOOL
    if not root.is_dir():
        return
    for folder in root.iterdir():
        host, _, pid_text = folder.name.rpartition("-")
        pid = int(pid_text) if pid_text.isdigit() else 0
        if host != _host() or not pid or (pid != os.getpid() and _alive(pid)):
            continue  # another machine's (a shared folder), or a live process's
        shutil.rmtree(folder, ignore_errors=True)


def _host() -> str:
    """This machine's name as a folder name can hold it."""
    return "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:64]


def remove_spool(folder: Path | None) -> None:
    """A retired node's spool folder, with whatever its dropped work still held."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Incoming:
    """A request body read as the node asks for it, spooled to disk as it arrives.

    `read(n)` is the HTTP layer's: up to n bytes, b"" only at the body's true end; a body cut short
    or too slow raises ProtocolError there. `limit`: the most bytes the body may have (413 above).
    """

    def __init__(self, read: Callable[[int], bytes], folder: Path, limit: int) -> None:
        self._read = read
        self.limit = limit
        self.received = 0  # bytes read from the wire so far
        self.wire_s = 0.0  # seconds spent waiting for them
        self.arrived = time.monotonic()  # when its last bytes were read (monotonic)
        self.done = False  # the body's end was read
        self.broken = False  # reading it failed (cut short, stalled): nothing more comes
        self.cancelled = False  # `cancel` was called: nothing more is read from the wire
        self.on_cancel: Callable[[], None] | None = None  # what else `cancel` does (the HTTP layer)
        # called once the body's end was read, before the node acts on it (its bytes are counted)
        self.on_done: Callable[[], None] | None = None
        self._first: bytes | None = None  # the first part, once read (its form is logged)
        self._out, self.path = new_spool(folder, "in-")
        self._kept = False
        self._tail, self._tail_at = b"", 0  # the bytes pulled last, and where they start

    def __len__(self) -> int:
        return self.received

    def cancel(self) -> None:
        """Stop reading: the next read from the wire fails (a read blocked on the socket returns
        at once where `on_cancel` shuts it); a pass over what was spooled still works."""
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def _pull(self, n: int) -> bytes:
        """Up to `n` more bytes from the wire (at least 1 MiB asked for: a part's 4-byte length
        is not a read of its own), appended to the spool; the last ones pulled stay in memory
        (`_tail`) for the pass reading them."""
        if self.done:
            return b""
        if self.cancelled:
            self.broken = True
            raise ProtocolError("reading the body was stopped: its round closed")
        started = time.monotonic()
        try:
            got = self._read(max(n, AHEAD))
        except BaseException:
            self.broken = True
            raise
        finally:
            self.wire_s += time.monotonic() - started
        self.arrived = time.monotonic()
        if not got:
            self.done = True
            self._flush()
            if self.on_done is not None:
                self.on_done()
            return b""
        self.received += len(got)
        if self.received > self.limit:
            raise TooLarge(f"body is more than the {self.limit} bytes a payload here may have")
        try:
            self._out.write(got)
        except OSError as exc:
            self.broken = True
            raise NoSpace(f"cannot spool the body: {exc.strerror or exc}") from None
        self._tail, self._tail_at = got, self.received - len(got)
        return got

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Callable[[int], bytes]]:
        """A pass from the body's start: what was read already comes from the spool, the rest from
        the wire (and goes to the spool as it comes)."""
        self._flush()
        with open(self.path, "rb") as spooled:
            at = 0

            def read(n: int) -> bytes:
                nonlocal at
                if at >= self.received and not self._pull(n):
                    return b""
                if at >= self._tail_at:  # pulled last: in memory
                    got = self._tail[at - self._tail_at : at - self._tail_at + n]
                else:
                    self._flush()
                    spooled.seek(at)
                    got = spooled.read(min(n, self._tail_at - at))
                at += len(got)
                return got

            yield read

    def _flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            self.broken = True
            raise NoSpace(f"cannot spool the body: {exc.strerror or exc}") from None

    def parts(self, count: int, limit: int = NO_LIMIT) -> Iterator[bytes]:
        """The body's parts (hefl.crypto.frame.read_parts), from its start; the first pass reads
        them from the wire."""
        with self._reader() as read:
            for i, part in enumerate(read_parts(read, count, limit)):
                if i == 0 and self._first is None:
                    self._first = part
                yield part

    @property
    def first_part(self) -> bytes | None:
        """The first part of a framed body, once it was read (for its form): as a pass read it,
        or from the spool (a body read whole before anyone parsed it); None if not a framed
        body."""
        if self._first is None and self.received:
            if not self._out.closed:
                self._flush()
            self._first = _first_part(self.path, self.received)
        return self._first

    def blocks(self, size: int, block: int) -> Iterator[bytes]:
        """An unframed body of exactly `size` bytes in blocks of `block` (the last one shorter)."""
        with self._reader() as read:
            left = size
            while left:
                want = min(block, left)
                got = bytearray(read(want))
                while len(got) < want and (more := read(want - len(got))):
                    got += more
                if len(got) < want:
                    raise ProtocolError(
                        f"payload is {size - left + len(got)} bytes, expected {size}"
                    )
                left -= want
                yield bytes(got)
            if read(1):
                raise ProtocolError(f"payload is more than the {size} bytes expected")

    def read_all(self) -> None:
        """Read the rest of the body from the wire into the spool."""
        while self._pull(1 << 20):
            pass

    def drain(self, seconds: float) -> None:
        """Read what is left of a refused body and drop it (not spooled; counted), for `seconds`
        at most: the sender gets its answer on a connection that stays usable, and the node's
        byte count is what came. Nothing is read of a body that broke or passed the limit; one
        that is not done in time is left unread (the connection is then shut)."""
        if self.done or self.broken or self.received > self.limit:
            return
        until = time.monotonic() + seconds
        try:
            while got := self._read(1 << 20):
                self.received += len(got)
                if self.received > self.limit or time.monotonic() > until:
                    return
        except ProtocolError:
            return
        self.done = True

    def keep(self) -> FileBody:
        """The whole body as a file the node keeps (removed by its new owner)."""
        self.read_all()
        self._flush()
        first = self.first_part
        self._out.close()
        self._kept = True
        return FileBody(self.path, first_part=first)

    def close(self) -> None:
        """The request ended: the spool goes, unless it was kept."""
        with contextlib.suppress(OSError):
            self._out.close()
        if not self._kept:
            self.path.unlink(missing_ok=True)


class FileBody:
    """A body on disk, sent in blocks; its length is known (sent with Content-Length). Each attempt
    reads the file again; `remove` deletes it once it is no longer needed."""

    def __init__(self, path: Path, first_part: bytes | None = None) -> None:
        self.path = path
        self._first = first_part
        self.size = path.stat().st_size

    @property
    def first_part(self) -> bytes | None:
        """The first part of a framed body (its form is logged), read from the file once; None
        if it is not one, or it is gone."""
        if self._first is None:
            self._first = _first_part(self.path, self.size)
        return self._first

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return True

    def parts(self, count: int, limit: int = NO_LIMIT) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            yield from read_parts(f.read, count, limit)

    def sender(self) -> FileSender:
        return FileSender(self.path, self.size)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _first_part(path: Path, size: int) -> bytes | None:
    """The first part of the framed body in `path` (of `size` bytes so far), if it is whole there
    and not larger than FIRST_PART_MOST; else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD.size + LENGTH.size)
            if len(head) < HEAD.size + LENGTH.size or head[:4] != MAGIC:
                return None
            (n,) = LENGTH.unpack_from(head, HEAD.size)
            if n > FIRST_PART_MOST or HEAD.size + LENGTH.size + n > size:
                return None
            return f.read(n)
    except OSError:
        return None


class FileSender:
    """One attempt's reader of a file body: requests sends it in blocks with its Content-Length."""

    def __init__(self, path: Path, size: int) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 (closed when read to its end, or by the GC)
        self._left = size

    def __len__(self) -> int:
        return self._left

    def __iter__(self) -> Iterator[bytes]:
        try:
            while block := self._f.read(min(BLOCK, self._left)):
                self._left -= len(block)
                yield block
        finally:
            self._f.close()


def new_spool(folder: Path, prefix: str) -> tuple[BinaryIO, Path]:
    """A private file to write a body into (`prefix`: what it is, for someone looking)."""
    try:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=folder)
    except OSError as exc:
        raise NoSpace(f"cannot spool a body in {folder}: {exc.strerror or exc}") from None
    return os.fdopen(fd, "wb"), Path(name)


class PartStream:
    """A body made as it is sent: `make()` gives its pieces (a framed body's head, then each
    part's length and bytes: hefl.crypto.frame.stream), anew for each attempt (a retry encrypts
    again: nothing of a failed attempt is kept). Sent chunked; `sent` counts what went out."""

    def __init__(self, make: Callable[[], Iterator[bytes]]) -> None:
        self._make = make
        self.sent = 0  # bytes of the last attempt, as they went out
        self.ended_at: float | None = None  # when the last attempt's last piece was made
        self.first_part: bytes | None = None

    def __bool__(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.sent

    def pieces(self) -> Iterator[bytes]:
        """The body in chunks of about 256 KiB (a ciphertext's few KiB, each with its length, in
        a chunk of its own would cost a chunk header and a system call apiece)."""
        self.sent = 0
        self.ended_at = None
        batch: list[bytes] = []
        size = 0
        for i, piece in enumerate(self._make()):
            if i == 2 and self.first_part is None:  # head, length, then the first part
                self.first_part = bytes(piece)
            batch.append(piece)
            size += len(piece)
            if size >= BLOCK:
                self.sent += size
                yield b"".join(batch)
                batch, size = [], 0
        if batch:
            self.sent += size
            yield b"".join(batch)
        self.ended_at = time.monotonic()


# what a node sends: bytes, a file, or a stream of parts
Outgoing = bytes | bytearray | FileBody | PartStream
