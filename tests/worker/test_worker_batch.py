"""Descriptor validation: every malformed field is refused with a message naming it."""

from __future__ import annotations

import numpy as np
import pytest
from descriptor_factory import Req, batch, replace

from pie.ipc.channel import to_bytes
from pie.ipc.messages import SamplerSpec
from pie.worker.batch import BatchError, ForwardBatch, WorkerLimits

LIMITS = WorkerLimits(
    vocab_size=100,
    page_size=4,
    total_pages=8,
    max_batch_tokens=64,
    max_batch_size=4,
    max_model_len=32,
    max_dist_size=8,
)


def good():
    return batch(7, [Req([1, 2, 3, 4, 5], 0, [0, 1]), Req([9], 3, [2])], page_size=4)


def test_valid_batch_decodes_to_views():
    b = ForwardBatch.decode(good(), LIMITS)
    assert b.token_ids.tolist() == [1, 2, 3, 4, 5, 9]
    assert b.positions.tolist() == [0, 1, 2, 3, 4, 3]
    assert b.output_rows.tolist() == [4, 5]
    assert b.output_requests().tolist() == [0, 1]
    assert not b.token_ids.flags.owndata
    assert b.allowed_tokens(100) is None


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"kv_page_indices": to_bytes([0, 9, 2], "int32")},
            r"kv_page_indices\[1\] = 9 is outside the KV pool of 8 pages",
        ),
        (
            {"positions": to_bytes([0, 1, 2, 3, 4, 5, 6], "int32")},
            r"positions has 7 entries but token_ids has 6",
        ),
        (
            {"token_ids": to_bytes([1, 2, 3, 4, 100, 9], "int32")},
            r"token_ids\[4\] = 100 is outside the vocabulary of 100",
        ),
        ({"qo_indptr": to_bytes([0, 2, 5], "int32")}, r"qo_indptr must rise from 0 to .* 6"),
        (
            {"kv_last_page_len": to_bytes([1, 5], "int32")},
            r"kv_last_page_len\[1\] = 5 must be between 1 and the page size 4",
        ),
        ({"kv_last_page_len": to_bytes([1], "int32")}, r"kv_last_page_len has 1 entries"),
        ({"output_rows": to_bytes([4, 6], "int32")}, r"output_rows\[1\] = 6 is outside"),
        ({"samplers": [SamplerSpec()]}, r"2 output rows but 1 samplers"),
        (
            {"samplers": [SamplerSpec(dist_k=9), SamplerSpec()]},
            r"sampler 0 asks for a top-9 distribution.*at most 8",
        ),
        (
            {
                "kv_page_indptr": to_bytes([0, 1, 2], "int32"),
                "kv_page_indices": to_bytes([0, 2], "int32"),
            },
            r"request 0 has 5 new tokens but its 1 KV pages hold only 1 slots",
        ),
        ({"token_ids": b"\0\0\0"}, r"token_ids has 3 bytes"),
        (
            {"positions": to_bytes([0, 1, 2, 3, 40, 3], "int32")},
            r"positions\[4\] = 40 is outside 0..31",
        ),
        (
            {
                "logit_mask_runs": to_bytes([0, 101], "uint32"),
                "logit_mask_indptr": to_bytes([0, 2, 2], "int32"),
            },
            r"logit mask of request 0 covers 101 ids",
        ),
        (
            {
                "mask_runs": to_bytes([0, 9], "uint32"),
                "mask_indptr": to_bytes([0, 2, 2, 2, 2, 2, 2], "int32"),
            },
            r"attention mask of token 0 covers 9 KV slots but its request has 5",
        ),
    ],
)
def test_malformed_fields_are_named(change, message):
    with pytest.raises(BatchError, match=message):
        ForwardBatch.decode(replace(good(), **change), LIMITS)


def test_batch_limits():
    many = batch(1, [Req([1], 0, [i]) for i in range(5)], page_size=4)
    with pytest.raises(BatchError, match=r"5 requests .* at most 4 \(max_batch_size\)"):
        ForwardBatch.decode(many, LIMITS)
    long = batch(1, [Req([1] * 30, 0, list(range(8)))], page_size=4)
    limits = WorkerLimits(**{**LIMITS.__dict__, "max_batch_tokens": 16})
    with pytest.raises(BatchError, match=r"30 tokens .* at most 16 \(max_batch_tokens\)"):
        ForwardBatch.decode(long, limits)


def test_logit_masks_expand_per_output_row():
    d = batch(
        1,
        [
            Req([1, 2], 0, [0], logit_mask=[3, 2]),
            Req([5], 0, [1]),
            Req([6], 0, [2], logit_mask=[0, 1]),
        ],
        page_size=4,
    )
    b = ForwardBatch.decode(d, LIMITS)
    allowed = b.allowed_tokens(10)
    assert allowed.shape == (3, 10)
    assert np.flatnonzero(allowed[0]).tolist() == [3, 4]
    assert allowed[1].all()  # no mask for the second request
    assert np.flatnonzero(allowed[2]).tolist() == [0]
