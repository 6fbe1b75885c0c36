"""The shared-memory ring: ordering, wrap-around, several readers, slow readers, limits, cleanup."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pie.ipc.ring import MessageTooLarge, Ring, RingClosed, RingError, RingTimeout


def shm_exists(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


def test_round_trip_and_unlink_on_close():
    w = Ring.create(num_slots=4, slot_bytes=256, num_readers=1)
    r = Ring.attach(w.name, reader_index=0)
    assert shm_exists(w.name)
    w.write(b"hello")
    w.write(b"")
    assert r.read_bytes(timeout=1) == b"hello"
    assert r.read_bytes(timeout=1) == b""
    r.close()
    w.close()
    w.close()  # idempotent
    assert not shm_exists(w.name)


def test_message_larger_than_slot_names_both_sizes():
    with Ring.create(num_slots=2, slot_bytes=100) as w:
        with pytest.raises(MessageTooLarge, match=r"101 bytes.*100 bytes"):
            w.write(b"x" * 101)
        w.write(b"x" * 100)  # exactly a slot is fine


def test_names_are_unique_per_instance():
    a = Ring.create(num_slots=1, slot_bytes=8)
    b = Ring.create(num_slots=1, slot_bytes=8)
    try:
        assert a.name != b.name
        assert str(os.getpid()) in a.name
    finally:
        a.close()
        b.close()


def test_read_timeout_and_closed_after_drain():
    w = Ring.create(num_slots=2, slot_bytes=16)
    r = Ring.attach(w.name, reader_index=0, spin_us=0)
    with pytest.raises(RingTimeout):
        r.read(timeout=0.05)
    w.write(b"last")
    w.close()  # unlinked, but the reader's mapping stays valid
    assert r.read_bytes(timeout=1) == b"last"
    with pytest.raises(RingClosed):
        r.read(timeout=1)
    r.close()


def test_attach_missing_ring_is_a_clear_error():
    with pytest.raises(RingError, match="does not exist"):
        Ring.attach("pie_no_such_ring_0", reader_index=0)


def test_full_ring_blocks_writer_until_every_reader_read():
    w = Ring.create(num_slots=2, slot_bytes=8, num_readers=2)
    r0 = Ring.attach(w.name, reader_index=0)
    r1 = Ring.attach(w.name, reader_index=1)
    w.write(b"a")
    w.write(b"b")
    assert not w.writable()
    with pytest.raises(RingTimeout):
        w.write(b"c", timeout=0.05)
    assert r0.read_bytes(timeout=1) == b"a"
    assert not w.writable()  # reader 1 still holds slot 0
    assert r1.read_bytes(timeout=1) == b"a"
    assert w.writable()
    w.write(b"c")
    for r in (r0, r1):
        assert r.read_bytes(timeout=1) == b"b"
        assert r.read_bytes(timeout=1) == b"c"
    for e in (r0, r1, w):
        e.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_slots=st.integers(1, 5),
    ops=st.lists(st.one_of(st.binary(max_size=64), st.none()), max_size=60),
)
def test_single_thread_matches_a_bounded_queue(num_slots, ops):
    """Writes and reads interleaved at random behave like a FIFO of capacity num_slots."""
    w = Ring.create(num_slots=num_slots, slot_bytes=64)
    r = Ring.attach(w.name, reader_index=0, spin_us=0)
    model: list[bytes] = []
    try:
        for op in ops:
            if op is None:  # read
                if model:
                    assert r.poll()
                    assert r.read_bytes(timeout=0) == model.pop(0)
                else:
                    assert not r.poll()
            else:
                assert w.writable() == (len(model) < num_slots)
                if len(model) < num_slots:
                    w.write(op)
                    model.append(op)
        while model:
            assert r.read_bytes(timeout=0) == model.pop(0)
    finally:
        r.close()
        w.close()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=80),
    num_slots=st.integers(1, 4),
    num_readers=st.integers(1, 3),
    slow=st.integers(0, 2),
)
def test_threads_several_readers_one_slow(sizes, num_slots, num_readers, slow):
    """Every reader sees every message, in order, across wrap-arounds; a slow reader only
    slows the writer down (back-pressure), it never loses or reorders a message."""
    msgs = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    w = Ring.create(num_slots=num_slots, slot_bytes=300, num_readers=num_readers, spin_us=20)
    readers = [Ring.attach(w.name, reader_index=i, spin_us=20) for i in range(num_readers)]
    got: list[list[bytes]] = [[] for _ in range(num_readers)]

    def consume(i: int) -> None:
        for _ in msgs:
            got[i].append(readers[i].read_bytes(timeout=10))
            if i == slow % num_readers and slow:
                time.sleep(0.0005)

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(num_readers)]
    for t in threads:
        t.start()
    for m in msgs:
        w.write(m, timeout=10)
    for t in threads:
        t.join(20)
    try:
        for i in range(num_readers):
            assert got[i] == msgs
    finally:
        for r in readers:
            r.close()
        w.close()


def _echo(req_name: str, resp_name: str, delay: float) -> None:
    req = Ring.attach(req_name, reader_index=0)
    resp = Ring.attach(resp_name, writer=True)
    try:
        while True:
            data = req.read_bytes(timeout=10)
            if delay:
                time.sleep(delay)
            resp.write(data[::-1], timeout=10)
    except RingClosed:
        pass
    finally:
        req.close()
        resp.close()


@pytest.mark.parametrize("delay", [0.0, 0.002])
def test_across_processes_with_a_slower_reader(delay):
    ctx = mp.get_context("spawn")
    req = Ring.create(num_slots=3, slot_bytes=4096, tag="req")
    resp = Ring.create(num_slots=3, slot_bytes=4096, tag="resp")
    back = Ring.attach(resp.name, reader_index=0)
    proc = ctx.Process(target=_echo, args=(req.name, resp.name, delay), daemon=True)
    proc.start()
    try:
        msgs = [os.urandom(n) for n in (0, 1, 4096, 17, 300, 2048, 5, 4000, 64, 1)] * 2
        # pipeline: keep writing while the slow reader lags; the ring applies back-pressure
        pending = []
        for m in msgs:
            while not req.writable() and pending:
                assert back.read_bytes(timeout=10) == pending.pop(0)[::-1]
            req.write(m, timeout=10)
            pending.append(m)
        for m in pending:
            assert back.read_bytes(timeout=10) == m[::-1]
    finally:
        req.close()  # the echo process sees RingClosed and exits
        proc.join(10)
        back.close()
        resp.close()
    assert proc.exitcode == 0
    assert not shm_exists(req.name) and not shm_exists(resp.name)


def test_idle_reader_parks_instead_of_spinning():
    """A reader waiting on an empty ring uses (almost) no CPU once its spin window passed."""
    w = Ring.create(num_slots=2, slot_bytes=16)
    r = Ring.attach(w.name, reader_index=0, spin_us=100)
    cpu0 = time.thread_time()
    wall0 = time.perf_counter()
    with pytest.raises(RingTimeout):
        r.read(timeout=0.3)
    cpu = time.thread_time() - cpu0
    wall = time.perf_counter() - wall0
    r.close()
    w.close()
    assert wall >= 0.29
    assert cpu < 0.1 * wall, f"waiting burned {cpu:.3f} s of CPU in {wall:.3f} s"


def test_parked_reader_is_woken_by_a_write():
    w = Ring.create(num_slots=2, slot_bytes=16)
    r = Ring.attach(w.name, reader_index=0, spin_us=0)
    out = []
    t = threading.Thread(target=lambda: out.append(r.read_bytes(timeout=5)))
    t.start()
    time.sleep(0.2)  # the reader is parked now
    start = time.perf_counter()
    w.write(b"wake")
    t.join(5)
    elapsed = time.perf_counter() - start
    r.close()
    w.close()
    assert out == [b"wake"]
    assert elapsed < 0.09, (
        f"a parked reader took {elapsed * 1e3:.1f} ms to wake (park slice is 100 ms)"
    )


def test_a_ring_larger_than_shared_memory_is_refused_up_front():
    st = os.statvfs("/dev/shm")
    slots = st.f_bavail * st.f_frsize // 2**31 + 2  # more 2 GiB slots than /dev/shm holds
    with pytest.raises(
        RingError, match=r"MiB of shared memory but /dev/shm has .* ring_slot_bytes"
    ):
        Ring.create(num_slots=slots, slot_bytes=2**31, num_readers=1)
