"""Everything that crosses the controller <-> worker boundary.

The controller's scheduler builds a `BatchDescriptor`, the worker answers with a `BatchResult`;
control operations (`CopyPages`, `SwapOut`, `SwapIn`, `Health`, `Shutdown`) travel on the same
ring. All messages are msgspec Structs encoded with msgpack, `array_like` (no field names on
the wire) and `gc=False` (they hold no reference cycles).

Bulk arrays travel as raw little-endian bytes and are read with `numpy.frombuffer`, never
element by element in Python. Dtypes are fixed per field and given in each field's comment.

Binary run-length encoding (BRLE): a mask of length N is a list of run lengths that alternate
starting with *false* (masked out); `[0, 5]` is five allowed positions, `[2, 3]` is two masked
then three allowed. A zero-length encoding means "default" (causal for attention masks, all
allowed for logit masks).

Data flow:   sched (controller) --BatchDescriptor--> worker --BatchResult--> sched
"""

from __future__ import annotations

import msgspec

# --- sampling ---------------------------------------------------------------------------------


class SamplerSpec(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, frozen=True):
    """What to do with one output row's logits.

    The pipeline runs in this order: logit mask, penalties (over `history`), temperature,
    top-k, top-p, min-p, extension stages (`extra`), then seeded categorical or argmax.
    `temperature == 0` means argmax. `top_k == 0` and `top_p == 1` and `min_p == 0` switch
    the stage off. `seed == 0` draws fresh randomness; any other seed is reproducible.
    Probes are independent of the token choice and are computed on the unscaled logits
    (after the logit mask) unless said otherwise.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    history: bytes = b""  # int32 token ids the penalties count over
    extra: dict[str, float] = {}  # parameters of registered extension stages, by stage name
    # probes
    sample: bool = True  # produce a token
    dist_k: int = -1  # >= 0: return the top-k distribution after temperature (0 = full vocab)
    raw_logits: bool = False  # return the unscaled float32 logits row
    logprob_ids: bytes = b""  # int32 ids whose log-softmax (no temperature) is returned
    entropy: bool = False  # return the entropy of the unscaled distribution


class RowResult(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """The outputs of one output row, only those its `SamplerSpec` asked for."""

    token: int = -1
    dist_ids: bytes = b""  # int32
    dist_probs: bytes = b""  # float32
    logits: bytes = b""  # float32, vocab-sized
    logprobs: bytes = b""  # float32, one per requested id
    entropy: float = 0.0


# --- batches ----------------------------------------------------------------------------------


class BatchDescriptor(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=1):
    """One forward pass over a ragged batch of R requests and T new tokens.

    Request r owns tokens `qo_indptr[r]:qo_indptr[r+1]` and KV pages
    `kv_page_indices[kv_page_indptr[r]:kv_page_indptr[r+1]]`; its KV length *after* this pass
    is `(npages - 1) * page_size + kv_last_page_len[r]`, and its new tokens occupy the last
    `n_r` slots of that range (their K/V are written there before attention).
    """

    batch_id: int
    token_ids: bytes  # int32 [T]
    positions: bytes  # int32 [T]   explicit RoPE positions (may repeat or skip)
    qo_indptr: bytes  # int32 [R+1]
    kv_page_indices: bytes  # int32 [sum pages]
    kv_page_indptr: bytes  # int32 [R+1]
    kv_last_page_len: bytes  # int32 [R]
    # rows of the flat token array that produce outputs, and one sampler per such row
    output_rows: bytes  # int32 [O]
    samplers: list[SamplerSpec]
    # optional per-token attention masks over the request's KV slots (BRLE, uint32 runs)
    mask_runs: bytes = b""  # uint32 [sum runs]
    mask_indptr: bytes = b""  # int32 [T+1] into mask_runs; empty = causal everywhere
    # optional per-request logit masks over the vocabulary (BRLE, uint32 runs)
    logit_mask_runs: bytes = b""  # uint32
    logit_mask_indptr: bytes = b""  # int32 [R+1]; empty = no masks


class BatchResult(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=2):
    """The worker's answer to one BatchDescriptor (or to a control op, with no rows).

    `error` is empty on success; otherwise it says precisely what was wrong with the batch and
    `rows` is empty. `tokens` repeats each row's token as int32 bytes for the common case
    where only tokens were asked for (then `rows` may be empty).
    """

    batch_id: int
    tokens: bytes = b""  # int32 [O]
    rows: list[RowResult] = []
    error: str = ""
    forward_us: int = 0  # time the worker spent on this batch, for statistics


# --- control operations -----------------------------------------------------------------------


class CopyPages(msgspec.Struct, array_like=True, gc=False, tag=3):
    """Copy whole KV pages inside the device pool (fork of working pages)."""

    batch_id: int
    src: bytes  # int32
    dst: bytes  # int32


class SwapOut(msgspec.Struct, array_like=True, gc=False, tag=4):
    """Move device pages to host slots (suspend)."""

    batch_id: int
    device_pages: bytes  # int32
    host_slots: bytes  # int32


class SwapIn(msgspec.Struct, array_like=True, gc=False, tag=5):
    """Move host slots back to device pages (restore)."""

    batch_id: int
    host_slots: bytes  # int32
    device_pages: bytes  # int32


class Health(msgspec.Struct, array_like=True, gc=False, tag=6):
    batch_id: int


class Shutdown(msgspec.Struct, array_like=True, gc=False, tag=7):
    batch_id: int


class WorkerInfo(msgspec.Struct, gc=False):
    """Sent once by the worker when it is ready: the capabilities the scheduler plans with."""

    arch: str
    vocab_size: int
    page_size: int
    total_pages: int
    host_pages: int
    max_batch_tokens: int
    max_batch_size: int
    max_model_len: int
    dtype: str
    device: str


Request = BatchDescriptor | CopyPages | SwapOut | SwapIn | Health | Shutdown
Response = BatchResult
