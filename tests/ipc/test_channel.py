"""Typed channels: descriptor and result round trips through a ring, zero-copy array reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pie.ipc.channel import Channel, Codec, as_array, request_channel, response_channel, to_bytes
from pie.ipc.messages import (
    BatchDescriptor,
    BatchResult,
    CopyPages,
    Health,
    Request,
    RowResult,
    SamplerSpec,
    Shutdown,
    SwapIn,
    SwapOut,
)
from pie.ipc.ring import MessageTooLarge, Ring

i32 = st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40).map(lambda v: to_bytes(v, "int32"))
samplers = st.builds(
    SamplerSpec,
    temperature=st.floats(0, 2),
    top_k=st.integers(0, 100),
    top_p=st.floats(0, 1),
    seed=st.integers(0, 2**63 - 1),
    history=i32,
    extra=st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=2),
    dist_k=st.integers(-1, 32),
    raw_logits=st.booleans(),
    logprob_ids=i32,
    entropy=st.booleans(),
)
descriptors = st.builds(
    BatchDescriptor,
    batch_id=st.integers(-(2**62), 2**62),
    token_ids=i32,
    positions=i32,
    qo_indptr=i32,
    kv_page_indices=i32,
    kv_page_indptr=i32,
    kv_last_page_len=i32,
    output_rows=i32,
    samplers=st.lists(samplers, max_size=5),
    mask_runs=i32,
    mask_indptr=i32,
    logit_mask_runs=i32,
    logit_mask_indptr=i32,
)
controls = st.one_of(
    st.builds(CopyPages, st.integers(0, 100), i32, i32),
    st.builds(SwapOut, st.integers(0, 100), i32, i32),
    st.builds(SwapIn, st.integers(0, 100), i32, i32),
    st.builds(Health, st.integers(0, 100)),
    st.builds(Shutdown, st.integers(0, 100)),
)
results = st.builds(
    BatchResult,
    batch_id=st.integers(-1, 2**40),
    tokens=i32,
    rows=st.lists(
        st.builds(
            RowResult,
            token=st.integers(-1, 2**31 - 1),
            dist_ids=i32,
            logits=i32,
            entropy=st.floats(allow_nan=False),
        ),
        max_size=4,
    ),
    error=st.text(max_size=30),
    forward_us=st.integers(0, 2**40),
)


@pytest.fixture(scope="module")
def rings():
    w = Ring.create(num_slots=4, slot_bytes=1 << 16, tag="chan")
    r = Ring.attach(w.name, reader_index=0, spin_us=0)
    yield w, r
    r.close()
    w.close()


@settings(max_examples=80, deadline=None)
@given(msgs=st.lists(st.one_of(descriptors, controls), min_size=1, max_size=3))
def test_requests_round_trip_through_a_ring(rings, msgs):
    w, r = rings
    tx, rx = request_channel(w), request_channel(r)
    for m in msgs:
        tx.send(m)
    for m in msgs:
        got = rx.recv(timeout=1)
        assert type(got) is type(m)
        assert got == m


@settings(max_examples=50, deadline=None)
@given(res=results)
def test_results_round_trip_through_a_ring(rings, res):
    w, r = rings
    response_channel(w).send(res)
    assert response_channel(r).recv(timeout=1) == res


def test_decoded_message_outlives_the_slot(rings):
    w, r = rings
    tx, rx = Channel(w, Request), Channel(r, Request)
    tx.send(Health(1))
    first = rx.recv(timeout=1)
    for i in range(10):  # overwrite every slot several times
        tx.send(Health(100 + i))
        rx.recv(timeout=1)
    assert first == Health(1)


def test_oversize_message_is_refused_with_sizes():
    w = Ring.create(num_slots=1, slot_bytes=128)
    try:
        tx = request_channel(w)
        big = CopyPages(1, b"\0" * 200, b"")
        with pytest.raises(MessageTooLarge, match=r"CopyPages of \d+ bytes .* slot of 128 bytes"):
            tx.send(big)
    finally:
        w.close()


def test_arrays_decode_without_copy():
    values = np.arange(49152, dtype=np.float32)
    data = to_bytes(values, "float32")
    view = as_array(data, "float32")
    assert np.array_equal(view, values)
    assert not view.flags.owndata  # a view on the bytes, no copy
    assert as_array(to_bytes([1, -2, 3], "int32"), "int32").tolist() == [1, -2, 3]


def test_codec_reuses_its_buffer():
    c = Codec(Request)
    a = c.encode(Health(1))
    b = c.encode(Health(2))
    assert a is b
    assert c.decode(bytes(b)) == Health(2)
