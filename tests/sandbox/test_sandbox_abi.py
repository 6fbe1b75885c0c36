"""Canonical-ABI converters round-trip every value the WIT world uses (property tests)."""

import ctypes

from hypothesis import given, settings
from hypothesis import strategies as st

from pie.sandbox import abi

U32 = st.integers(0, 2**32 - 1)


def roundtrip(ty, value):
    c = abi._VAL()
    ty.lower(value, c)
    return ty.lift(c)


def roundtrip_at(ty, value):
    buf = (ctypes.c_uint8 * abi.VAL_SIZE)()
    addr = ctypes.addressof(buf)
    ty.lower_at(value, addr)
    return ty.lift_at(addr)


@given(U32, st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.booleans())
def test_scalars(u, s, f, b):
    for fn in (roundtrip, roundtrip_at):
        assert fn(abi.U32, u) == u
        assert fn(abi.S64, s) == s
        assert fn(abi.F64, f) == f
        assert fn(abi.BOOL, b) is b
        assert fn(abi.F32, f) == ctypes.c_float(f).value


def test_u32_range_is_checked():
    import pytest

    for bad in (-1, 2**32):
        with pytest.raises(OverflowError):
            roundtrip(abi.U32, bad)


@settings(max_examples=60)
@given(st.text(), st.binary(max_size=300), st.lists(U32, max_size=200))
def test_strings_bytes_and_u32_lists(text, data, nums):
    assert roundtrip(abi.STRING, text) == text
    assert roundtrip(abi.BYTES, data) == data
    assert roundtrip(abi.LIST_U32, nums) == nums  # both the small and the numpy path
    assert roundtrip_at(abi.LIST_U32, nums) == nums


@settings(max_examples=40)
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=100))
def test_f32_lists(xs):
    assert roundtrip(abi.LIST_F32, xs) == xs


@settings(max_examples=40)
@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=20)), max_size=10),
       st.lists(st.lists(U32, max_size=5), max_size=5), st.one_of(st.none(), st.text()))
def test_composites(pairs, nested, maybe):
    ty = abi.LIST(abi.TUPLE(abi.STRING, abi.BYTES))
    assert roundtrip(ty, pairs) == pairs
    assert roundtrip(abi.LIST(abi.LIST_U32), nested) == nested
    assert roundtrip(abi.OPTION(abi.STRING), maybe) == maybe


def test_results_lower_ok_and_err():
    c = abi._VAL()
    abi.RESULT(abi.U32).lower(7, c)
    assert c.of.result.is_ok and abi.U32.lift(c.of.result.val.contents) == 7
    c = abi._VAL()
    abi.RESULT(None).lower(abi.Err("no such context"), c)
    assert not c.of.result.is_ok
    assert abi.STRING.lift(c.of.result.val.contents) == "no such context"
