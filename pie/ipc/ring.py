"""A shared-memory ring of fixed-size slots: one writer, N readers.

The controller feeds each worker through one `Ring` (requests, read by every tensor-parallel
rank) and reads its answers from another (results, read by the controller). `pie.ipc.channel`
puts msgpack frames in the slots; this module only moves bytes.

Layout of the segment (all integers little-endian, u32 words 4-byte aligned)::

    header   64 B   magic, version, num_slots, slot_bytes, num_readers, closed,
                    write_epoch (futex word), writer_parked
    readers  64 B each: read_epoch (futex word), reader_parked
    slots    num_slots x stride: [length u32][pad u32][written u8][read u8 x N][pad] payload

Protocol (the vLLM shared-memory broadcast ring, plus futex parking):

* The writer walks the slots in order. A slot is free when it was never written or every reader
  has set its read flag. The writer clears `written`, copies the payload, clears the read flags,
  then sets `written` (after a fence): a reader that sees its read flag cleared therefore sees a
  complete payload.
* Reader i walks the slots in the same order and takes slot s when `written[s] == 1` and
  `read[s][i] == 0`; it sets `read[s][i] = 1` only after it has finished with the payload.
* Waiting spins for `spin_us` microseconds, then parks in the kernel (a futex on the epoch word
  the other side bumps), so an idle engine burns no CPU. Park and wake follow the Dekker
  pattern (store own parked flag; fence; load the other's progress) so a wake is never lost;
  every park also has a timeout so liveness checks run while idle.

The memory fence is a lock acquire/release (an atomic read-modify-write, a full barrier on x86
and ARM). On platforms without futexes, parking degrades to short sleeps.

Cleanup: the creator registers the segment with multiprocessing's resource tracker, which
unlinks it if every process using it dies without closing; attaching does not register (so a
reader's exit never removes the writer's segment). Names carry the creating pid and a random
token, so two engines on one host never collide.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
import secrets
import struct
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing import resource_tracker, shared_memory
from typing import Self

try:  # POSIX shared memory without the resource-tracker registration SharedMemory does on attach
    import _posixshmem
except ImportError:  # pragma: no cover - non-POSIX
    _posixshmem = None

_MAGIC = 0x52454950  # "PIER"
_VERSION = 1
_HEADER = 64
_READER_STRIDE = 64
_SLOT_META = 8  # length u32 + reserved u32 before the flags

# header u32 word indices
_W_MAGIC, _W_VERSION, _W_SLOTS, _W_SLOT_BYTES, _W_READERS, _W_CLOSED = 0, 1, 2, 3, 4, 5
_W_WRITE_EPOCH, _W_WRITER_PARKED = 6, 7

MAX_READERS = 32
DEFAULT_SPIN_US = 50.0
_PARK_SLICE_S = 0.1  # longest single park; bounds how late a liveness check runs

NAME_PREFIX = "pie_"


class RingError(RuntimeError):
    """Base class of ring failures."""


class RingClosed(RingError):
    """The writer closed the ring (or the local side did); no more messages will come."""


class RingTimeout(RingError, TimeoutError):
    """A wait ran past its deadline."""


class MessageTooLarge(RingError, ValueError):
    """A message does not fit one slot."""


# a spinning side gives its core to the other side when they share one (a loaded machine);
# on an idle core sched_yield returns at once
_yield = getattr(os, "sched_yield", lambda: None)

# --- fences and futexes -------------------------------------------------------------------------

_fence_lock = threading.Lock()


def fence() -> None:
    """A full memory barrier (lock acquire/release is an atomic RMW on every platform)."""
    _fence_lock.acquire()
    _fence_lock.release()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared (not PRIVATE): the word lives in a shared mapping
_libc = None
if sys.platform.startswith("linux") and _SYS_FUTEX is not None:
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _syscall = _libc.syscall
        _syscall.restype = ctypes.c_long
    except OSError:  # pragma: no cover
        _libc = None

HAVE_FUTEX = _libc is not None


def _futex_wait(addr: int, expected: int, timeout_s: float) -> None:
    """Sleep while the u32 at `addr` equals `expected` (or until woken / timed out).

    ctypes releases the GIL around the call, so other threads of the process keep running.
    """
    if _libc is None:
        time.sleep(min(timeout_s, 0.0005))
        return
    sec = int(timeout_s)
    ts = _Timespec(sec, int((timeout_s - sec) * 1e9))
    _syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAIT),
        ctypes.c_uint32(expected),
        ctypes.byref(ts),
        None,
        ctypes.c_int(0),
    )


def _futex_wake(addr: int) -> None:
    if _libc is None:
        return
    _syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(addr),
        ctypes.c_int(_FUTEX_WAKE),
        ctypes.c_int(2**31 - 1),
        None,
        None,
        ctypes.c_int(0),
    )


# --- segments -----------------------------------------------------------------------------------


def unique_name(tag: str) -> str:
    """A segment name no other engine instance on this host uses (pid + random token)."""
    return f"{NAME_PREFIX}{os.getpid()}_{secrets.token_hex(4)}_{tag}"


class _Segment:
    """A mapped POSIX shared-memory segment; `owner` unlinks it."""

    def __init__(self, name: str, size: int | None):
        self.owner = size is not None
        if self.owner:
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
            self.name = self._shm.name
            self.buf = self._shm.buf
            self._mmap = None
        else:
            self._shm = None
            self.name = name
            if _posixshmem is None:  # pragma: no cover
                raise RingError("shared memory rings need a POSIX system")
            try:
                fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
            except FileNotFoundError:
                raise RingError(
                    f"shared-memory ring {name!r} does not exist; the engine that created it "
                    f"has exited"
                ) from None
            try:
                self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            self.buf = memoryview(self._mmap)
        # the base address, for futex syscalls; the ctypes view is dropped at once so it does
        # not pin the buffer (an exported buffer cannot be closed)
        anchor = ctypes.c_char.from_buffer(self.buf)
        self.address = ctypes.addressof(anchor)
        del anchor

    def close(self) -> None:
        if self.buf is None:
            return
        self.buf.release()
        self.buf = None
        if self._shm is not None:
            self._shm.close()
            try:
                self._shm.unlink()
            except FileNotFoundError:
                # someone (a resource tracker) already removed it; keep the tracker consistent
                try:
                    resource_tracker.unregister(self._shm._name, "shared_memory")
                except Exception:  # noqa: BLE001, S110 - best-effort cleanup
                    pass
        else:
            self._mmap.close()


def _check_shm_space(size: int, where: str = "/dev/shm") -> None:
    """Refuse a segment the shared-memory filesystem cannot hold.

    tmpfs accepts the size up front and kills the process with SIGBUS on first touch beyond
    its capacity (containers often mount a 64 MiB /dev/shm), so check before creating.
    """
    try:
        st = os.statvfs(where)
    except OSError:
        return  # no /dev/shm to inspect (not Linux): let the OS decide
    free = st.f_bavail * st.f_frsize
    if size > free:
        raise RingError(
            f"a ring needs {size / 2**20:.1f} MiB of shared memory but {where} has "
            f"{free / 2**20:.1f} MiB free; lower the ring_slots or ring_slot_bytes driver "
            f"options, or enlarge {where} (docker: --shm-size=1g)"
        )


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# --- the ring -----------------------------------------------------------------------------------


class Ring:
    """One endpoint of a shared-memory ring: the writer, or reader number `reader_index`.

    Create the segment with `Ring.create` (the writer side, usually in the controller) and open
    it elsewhere with `Ring.attach(name, reader_index=i)` or `Ring.attach(name, writer=True)`.
    Endpoints are used by one thread each (the writer by one thread, each reader by one).

        ring = Ring.create(num_slots=8, slot_bytes=1 << 20, num_readers=1)
        reader = Ring.attach(ring.name, reader_index=0)
        ring.write(b"hello")
        with reader.read() as payload:   # a memoryview into the slot, valid inside the block
            bytes(payload)
    """

    def __init__(
        self,
        segment: _Segment,
        *,
        writer: bool,
        reader_index: int | None,
        spin_us: float,
    ):
        self._seg = segment
        self.name = segment.name
        buf = segment.buf
        self._u32 = buf.cast("I")
        self._u8 = buf
        if self._u32[_W_MAGIC] != _MAGIC or self._u32[_W_VERSION] != _VERSION:
            raise RingError(f"shared-memory segment {self.name!r} is not a pie ring")
        self.num_slots = self._u32[_W_SLOTS]
        self.slot_bytes = self._u32[_W_SLOT_BYTES]
        self.num_readers = self._u32[_W_READERS]
        self.is_writer = writer
        self.reader_index = reader_index
        if reader_index is not None and not 0 <= reader_index < self.num_readers:
            raise ValueError(
                f"reader index {reader_index} is out of range for a ring with "
                f"{self.num_readers} readers"
            )
        self.spin_s = max(0.0, spin_us) * 1e-6
        self._meta = _align(_SLOT_META + 1 + self.num_readers, 64)
        self._stride = self._meta + _align(self.slot_bytes, 64)
        self._slots_at = _HEADER + _READER_STRIDE * self.num_readers
        self._next = 0
        self._closed_locally = False
        self._interrupted = False
        self._pending_release: int | None = None

    # construction

    @staticmethod
    def layout_bytes(num_slots: int, slot_bytes: int, num_readers: int) -> int:
        meta = _align(_SLOT_META + 1 + num_readers, 64)
        return _HEADER + _READER_STRIDE * num_readers + num_slots * (meta + _align(slot_bytes, 64))

    @classmethod
    def create(
        cls,
        num_slots: int = 8,
        slot_bytes: int = 1 << 20,
        num_readers: int = 1,
        *,
        name: str | None = None,
        tag: str = "ring",
        spin_us: float = DEFAULT_SPIN_US,
    ) -> Ring:
        """Create a ring and return its writer endpoint (which unlinks the segment on close)."""
        if num_slots < 1:
            raise ValueError(f"a ring needs at least one slot, got {num_slots}")
        if not 1 <= num_readers <= MAX_READERS:
            raise ValueError(f"a ring has 1 to {MAX_READERS} readers, got {num_readers}")
        if not 0 < slot_bytes < 2**32 - 64:
            raise ValueError(f"slot size must be between 1 byte and 4 GiB, got {slot_bytes}")
        size = cls.layout_bytes(num_slots, slot_bytes, num_readers)
        _check_shm_space(size)
        seg = _Segment(name or unique_name(tag), size)
        u32 = seg.buf.cast("I")
        u32[_W_SLOTS] = num_slots
        u32[_W_SLOT_BYTES] = slot_bytes
        u32[_W_READERS] = num_readers
        u32[_W_VERSION] = _VERSION
        u32[_W_MAGIC] = _MAGIC
        u32.release()
        return cls(seg, writer=True, reader_index=None, spin_us=spin_us)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        reader_index: int | None = None,
        writer: bool = False,
        spin_us: float = DEFAULT_SPIN_US,
    ) -> Ring:
        """Open an existing ring as reader `reader_index`, or as its writer (`writer=True`)."""
        if writer == (reader_index is not None):
            raise ValueError("attach a ring either as its writer or as one reader")
        return cls(_Segment(name, None), writer=writer, reader_index=reader_index, spin_us=spin_us)

    # offsets

    def _slot(self, s: int) -> int:
        return self._slots_at + s * self._stride

    def _reader_word(self, i: int) -> int:  # u32 index of reader i's read_epoch
        return (_HEADER + _READER_STRIDE * i) // 4

    # state

    @property
    def closed(self) -> bool:
        """True once this endpoint was closed, or the writer closed the ring."""
        return self._closed_locally or (self._seg.buf is not None and self._u32[_W_CLOSED] != 0)

    def _check_open(self) -> None:
        if self._closed_locally:
            raise RingClosed(f"ring {self.name} endpoint is closed")

    # writing

    def _slot_free(self, base: int) -> bool:
        u8 = self._u8
        if u8[base + _SLOT_META] == 0:
            return True
        flags = base + _SLOT_META + 1
        return all(u8[flags + j] for j in range(self.num_readers))

    def writable(self) -> bool:
        """True when `write` would not wait (the next slot is free)."""
        return self._slot_free(self._slot(self._next))

    def write(
        self,
        data: bytes | bytearray | memoryview,
        timeout: float | None = None,
        alive: Callable[[], bool] | None = None,
    ) -> None:
        """Copy one message into the next slot, waiting (spin, then park) while the ring is full.

        Raises MessageTooLarge if `data` exceeds the slot size, RingTimeout after `timeout`
        seconds, RingClosed if `alive()` turns false or the endpoint was closed meanwhile.
        """
        assert self.is_writer, "only the writer endpoint writes"
        self._check_open()
        n = len(data)
        if n > self.slot_bytes:
            raise MessageTooLarge(
                f"message of {n} bytes does not fit a ring slot of {self.slot_bytes} bytes; "
                f"raise the ring slot size or send less per message"
            )
        base = self._slot(self._next)
        if not self._slot_free(base):
            self._wait_writable(base, timeout, alive)
        u8 = self._u8
        flags = base + _SLOT_META
        u8[flags] = 0
        struct.pack_into("<I", u8, base, n)
        u8[base + self._meta : base + self._meta + n] = data
        u8[flags + 1 : flags + 1 + self.num_readers] = bytes(self.num_readers)
        fence()
        u8[flags] = 1
        self._next = (self._next + 1) % self.num_slots
        u32 = self._u32
        u32[_W_WRITE_EPOCH] = (u32[_W_WRITE_EPOCH] + 1) & 0xFFFFFFFF
        fence()
        if any(u32[self._reader_word(i) + 1] for i in range(self.num_readers)):
            _futex_wake(self._seg.address + _W_WRITE_EPOCH * 4)

    def _wait_writable(self, base: int, timeout: float | None, alive) -> None:
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        spin_until = start + self.spin_s
        while time.perf_counter() < spin_until:
            if self._slot_free(base):
                return
            _yield()
        u32 = self._u32
        flags = base + _SLOT_META + 1
        while True:
            self._check_open()
            if self._interrupted:
                self._interrupted = False
                raise RingClosed(f"ring {self.name}: wait interrupted")
            u32[_W_WRITER_PARKED] = 1
            fence()
            slow = next((j for j in range(self.num_readers) if not self._u8[flags + j]), None)
            if slow is None or self._u8[base + _SLOT_META] == 0:
                u32[_W_WRITER_PARKED] = 0
                return
            word = self._reader_word(slow)
            epoch = u32[word]
            if self._slot_free(base):
                u32[_W_WRITER_PARKED] = 0
                return
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                u32[_W_WRITER_PARKED] = 0
                raise RingTimeout(
                    f"ring {self.name}: reader {slow} did not free a slot within {timeout:.3g} s"
                )
            left = _PARK_SLICE_S if deadline is None else min(_PARK_SLICE_S, deadline - now)
            _futex_wait(self._seg.address + word * 4, epoch, left)
            u32[_W_WRITER_PARKED] = 0
            if alive is not None and not alive():
                raise RingClosed(f"ring {self.name}: the reading side is gone")

    # reading

    def _slot_ready(self, base: int) -> bool:
        u8 = self._u8
        return u8[base + _SLOT_META] == 1 and u8[base + _SLOT_META + 1 + self.reader_index] == 0

    def poll(self) -> bool:
        """True when a message is waiting for this reader."""
        return self._slot_ready(self._slot(self._next))

    def read(
        self, timeout: float | None = None, alive: Callable[[], bool] | None = None
    ) -> _SlotView:
        """Wait for the next message; returns a context manager holding a view of the payload.

        The slot is handed back to the writer when the `with` block exits (or on `release()`).
        Raises RingTimeout after `timeout` seconds (0 = do not wait), RingClosed when the writer
        closed the ring and every message was consumed, or when `alive()` turns false.
        """
        assert self.reader_index is not None, "only reader endpoints read"
        self._check_open()
        assert self._pending_release is None, "release the previous message before reading"
        base = self._slot(self._next)
        if not self._slot_ready(base):
            self._wait_readable(base, timeout, alive)
        fence()
        n = struct.unpack_from("<I", self._u8, base)[0]
        start = base + self._meta
        self._pending_release = base
        return _SlotView(self, self._u8[start : start + n])

    def read_bytes(self, timeout: float | None = None, alive=None) -> bytes:
        """`read` and copy the payload out."""
        with self.read(timeout, alive) as view:
            return bytes(view)

    def _release(self) -> None:
        base = self._pending_release
        if base is None:
            return
        self._pending_release = None
        i = self.reader_index
        fence()  # every load of the payload happens before the flag store
        self._u8[base + _SLOT_META + 1 + i] = 1
        self._next = (self._next + 1) % self.num_slots
        u32 = self._u32
        word = self._reader_word(i)
        u32[word] = (u32[word] + 1) & 0xFFFFFFFF
        fence()
        if u32[_W_WRITER_PARKED]:
            _futex_wake(self._seg.address + word * 4)

    def _wait_readable(self, base: int, timeout: float | None, alive) -> None:
        start = time.perf_counter()
        deadline = None if timeout is None else start + timeout
        spin_until = start + min(self.spin_s, timeout if timeout is not None else self.spin_s)
        while time.perf_counter() < spin_until:
            if self._slot_ready(base):
                return
            _yield()
        u32 = self._u32
        parked = self._reader_word(self.reader_index) + 1
        while True:
            self._check_open()
            if self._interrupted:
                self._interrupted = False
                raise RingClosed(f"ring {self.name}: wait interrupted")
            u32[parked] = 1
            fence()
            epoch = u32[_W_WRITE_EPOCH]
            if self._slot_ready(base):
                u32[parked] = 0
                return
            if u32[_W_CLOSED]:
                u32[parked] = 0
                raise RingClosed(f"ring {self.name} was closed by its writer")
            now = time.perf_counter()
            if deadline is not None and now >= deadline:
                u32[parked] = 0
                raise RingTimeout(f"ring {self.name}: no message within {timeout:.3g} s")
            left = _PARK_SLICE_S if deadline is None else min(_PARK_SLICE_S, deadline - now)
            _futex_wait(self._seg.address + _W_WRITE_EPOCH * 4, epoch, left)
            u32[parked] = 0
            if alive is not None and not alive():
                raise RingClosed(f"ring {self.name}: the writing side is gone")

    # shutdown

    def interrupt(self) -> None:
        """Make a wait in progress on this endpoint (another thread) raise RingClosed soon."""
        self._interrupted = True
        if self._seg.buf is not None:
            _futex_wake(self._seg.address + _W_WRITE_EPOCH * 4)
            for i in range(self.num_readers):
                _futex_wake(self._seg.address + self._reader_word(i) * 4)

    def close(self) -> None:
        """Close this endpoint; the creator also marks the ring closed and unlinks the segment.

        Idempotent. Readers see RingClosed once they consumed what was written before.
        """
        if self._closed_locally:
            return
        self._closed_locally = True
        if self._seg.buf is not None and self.is_writer:
            self._u32[_W_CLOSED] = 1
            fence()
            _futex_wake(self._seg.address + _W_WRITE_EPOCH * 4)
        self._u32.release()
        self._u8 = None
        self._seg.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort for forgotten endpoints
        try:
            if not self._closed_locally and self._pending_release is None:
                self.close()
        except Exception:  # noqa: BLE001, S110 - best-effort cleanup
            pass


class _SlotView:
    """The payload of one slot, handed back to the writer on exit."""

    __slots__ = ("_ring", "view")

    def __init__(self, ring: Ring, view: memoryview):
        self._ring = ring
        self.view = view

    def __enter__(self) -> memoryview:
        return self.view

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.view is not None:
            self.view.release()
            self.view = None
            self._ring._release()
