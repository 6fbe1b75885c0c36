"""`ForwardBatch`: a `BatchDescriptor` decoded into numpy arrays and checked against the worker.

Data flow inside the worker process:

    ring bytes --Channel.recv--> BatchDescriptor --ForwardBatch.decode--> numpy arrays (views)
        --driver--> tensors, forward, logits [O, V] --sampling--> BatchResult

Decoding is `numpy.frombuffer` on each bytes field (no copies, no per-element Python). Every
check here turns a malformed descriptor into a `BatchError` whose message names the field, the
offending index and the limit, so the scheduler author can fix the bug; the worker then answers
that batch with the error and keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pie.ipc.messages import BatchDescriptor, SamplerSpec


class BatchError(ValueError):
    """A descriptor the worker cannot execute; the message says which field is wrong and how."""


@dataclass(frozen=True)
class WorkerLimits:
    """What the worker can execute, checked for every batch."""

    vocab_size: int
    page_size: int
    total_pages: int
    max_batch_tokens: int
    max_batch_size: int
    max_model_len: int
    max_dist_size: int


def _i32(desc: BatchDescriptor, name: str, dtype: str = "<i4") -> np.ndarray:
    data = getattr(desc, name)
    if len(data) % 4:
        raise BatchError(f"{name} has {len(data)} bytes, not a whole number of 4-byte integers")
    return np.frombuffer(data, dtype=dtype)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _outside(a: np.ndarray, lo: int, hi: int) -> int | None:
    """Index of the first element outside [lo, hi), or None; two reductions on the good path."""
    if a.size == 0 or (a.min() >= lo and a.max() < hi):
        return None
    return int(np.argmax((a < lo) | (a >= hi)))


@dataclass
class ForwardBatch:
    """One validated batch. Arrays are read-only views of the descriptor's bytes."""

    batch_id: int
    token_ids: np.ndarray  # int32 [T]
    positions: np.ndarray  # int32 [T]
    qo_indptr: np.ndarray  # int32 [R+1]
    kv_page_indices: np.ndarray  # int32 [sum pages]
    kv_page_indptr: np.ndarray  # int32 [R+1]
    kv_last_page_len: np.ndarray  # int32 [R]
    output_rows: np.ndarray  # int32 [O]
    samplers: list[SamplerSpec]
    mask_runs: np.ndarray | None  # uint32, BRLE per token
    mask_indptr: np.ndarray | None  # int32 [T+1]
    logit_mask_runs: np.ndarray | None  # uint32, BRLE per request
    logit_mask_indptr: np.ndarray | None  # int32 [R+1]

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_requests(self) -> int:
        return len(self.qo_indptr) - 1

    def output_requests(self) -> np.ndarray:
        """int64 [O]: the request each output row belongs to."""
        return np.searchsorted(self.qo_indptr, self.output_rows, side="right") - 1

    @staticmethod
    def decode(desc: BatchDescriptor, limits: WorkerLimits) -> ForwardBatch:
        """Decode and validate; raises BatchError naming the first problem found."""
        tokens = _i32(desc, "token_ids")
        positions = _i32(desc, "positions")
        qo = _i32(desc, "qo_indptr")
        pages = _i32(desc, "kv_page_indices")
        pindptr = _i32(desc, "kv_page_indptr")
        last = _i32(desc, "kv_last_page_len")
        out_rows = _i32(desc, "output_rows")
        t = len(tokens)
        if len(positions) != t:
            raise BatchError(f"positions has {len(positions)} entries but token_ids has {t}")
        if t > limits.max_batch_tokens:
            raise BatchError(
                f"batch has {t} tokens but the worker accepts at most {limits.max_batch_tokens} "
                f"(max_batch_tokens); split the batch"
            )
        nq = np.diff(qo)
        if len(qo) < 1 or qo[0] != 0 or qo[-1] != t or (nq.size and nq.min() < 0):
            raise BatchError(
                f"qo_indptr must rise from 0 to the token count {t}, got {qo[:8].tolist()}"
                f"{'...' if len(qo) > 8 else ''}"
            )
        r = len(qo) - 1
        if r > limits.max_batch_size:
            raise BatchError(
                f"batch has {r} requests but the worker accepts at most {limits.max_batch_size} "
                f"(max_batch_size)"
            )
        if len(pindptr) != r + 1:
            raise BatchError(f"kv_page_indptr has {len(pindptr)} entries, expected {r + 1}")
        npages = np.diff(pindptr)
        if pindptr[0] != 0 or pindptr[-1] != len(pages) or (npages.size and npages.min() < 0):
            raise BatchError(
                f"kv_page_indptr must rise from 0 to the {len(pages)} page indices given"
            )
        if len(last) != r:
            raise BatchError(f"kv_last_page_len has {len(last)} entries, expected {r}")
        i = _outside(pages, 0, limits.total_pages)
        if i is not None:
            raise BatchError(
                f"kv_page_indices[{i}] = {int(pages[i])} is outside the KV pool of "
                f"{limits.total_pages} pages"
            )
        has = npages > 0
        if r and (last.min() < 1 or last.max() > limits.page_size):
            bad = has & ((last < 1) | (last > limits.page_size))
        else:
            bad = None
        if bad is not None and bad.any():
            i = _first_bad(bad)
            raise BatchError(
                f"kv_last_page_len[{i}] = {int(last[i])} must be between 1 and the page size "
                f"{limits.page_size}"
            )
        kv_len = np.where(has, (npages - 1) * limits.page_size + last, 0)
        if r and (kv_len - nq).min() < 0:
            i = _first_bad(kv_len < nq)
            raise BatchError(
                f"request {i} has {int(nq[i])} new tokens but its {int(npages[i])} KV pages "
                f"hold only {int(kv_len[i])} slots"
            )
        if r and kv_len.max() > limits.max_model_len:
            i = _first_bad(kv_len > limits.max_model_len)
            raise BatchError(
                f"request {i} reaches {int(kv_len[i])} tokens, beyond the model's "
                f"{limits.max_model_len}"
            )
        i = _outside(tokens, 0, limits.vocab_size)
        if i is not None:
            raise BatchError(
                f"token_ids[{i}] = {int(tokens[i])} is outside the vocabulary of "
                f"{limits.vocab_size}"
            )
        i = _outside(positions, 0, limits.max_model_len)
        if i is not None:
            raise BatchError(
                f"positions[{i}] = {int(positions[i])} is outside 0..{limits.max_model_len - 1}"
            )
        if len(out_rows) != len(desc.samplers):
            raise BatchError(
                f"{len(out_rows)} output rows but {len(desc.samplers)} samplers; give one "
                f"sampler per output row"
            )
        i = _outside(out_rows, 0, t)
        if i is not None:
            raise BatchError(
                f"output_rows[{i}] = {int(out_rows[i])} is outside the batch's {t} tokens"
            )
        for i, s in enumerate(desc.samplers):
            k = s.dist_k or limits.vocab_size
            if s.dist_k >= 0 and k > limits.max_dist_size:
                raise BatchError(
                    f"sampler {i} asks for a top-{k} distribution; "
                    f"the worker returns at most {limits.max_dist_size} (max_dist_size)"
                )
            if len(s.history) % 4 or len(s.logprob_ids) % 4:
                raise BatchError(f"sampler {i}: history and logprob_ids must be int32 bytes")
            if s.logprob_ids:
                ids = np.frombuffer(s.logprob_ids, dtype="<i4")
                if np.any((ids < 0) | (ids >= limits.vocab_size)):
                    raise BatchError(
                        f"sampler {i} asks for log-probabilities of ids outside the "
                        f"vocabulary of {limits.vocab_size}"
                    )
        mask_runs = mask_indptr = None
        if desc.mask_indptr:
            mask_indptr = _i32(desc, "mask_indptr")
            mask_runs = _i32(desc, "mask_runs", "<u4")
            if len(mask_indptr) != t + 1:
                raise BatchError(f"mask_indptr has {len(mask_indptr)} entries, expected {t + 1}")
            if (
                mask_indptr[0] != 0
                or mask_indptr[-1] != len(mask_runs)
                or np.any(np.diff(mask_indptr) < 0)
            ):
                raise BatchError(f"mask_indptr must rise from 0 to the {len(mask_runs)} runs")
            tok_req = np.repeat(np.arange(r), nq)
            for row in range(t):
                a, b = int(mask_indptr[row]), int(mask_indptr[row + 1])
                if b > a:
                    total = int(mask_runs[a:b].sum(dtype=np.int64))
                    req = int(tok_req[row])
                    if total > kv_len[req]:
                        raise BatchError(
                            f"attention mask of token {row} covers {total} KV slots but its "
                            f"request has {int(kv_len[req])}"
                        )
        lm_runs = lm_indptr = None
        if desc.logit_mask_indptr:
            lm_indptr = _i32(desc, "logit_mask_indptr")
            lm_runs = _i32(desc, "logit_mask_runs", "<u4")
            if len(lm_indptr) != r + 1:
                raise BatchError(
                    f"logit_mask_indptr has {len(lm_indptr)} entries, expected {r + 1}"
                )
            if lm_indptr[0] != 0 or lm_indptr[-1] != len(lm_runs) or np.any(np.diff(lm_indptr) < 0):
                raise BatchError(f"logit_mask_indptr must rise from 0 to the {len(lm_runs)} runs")
            for req in range(r):
                a, b = int(lm_indptr[req]), int(lm_indptr[req + 1])
                total = int(lm_runs[a:b].sum(dtype=np.int64))
                if total > limits.vocab_size:
                    raise BatchError(
                        f"logit mask of request {req} covers {total} ids but the vocabulary has "
                        f"{limits.vocab_size}"
                    )
        return ForwardBatch(
            batch_id=desc.batch_id,
            token_ids=tokens,
            positions=positions,
            qo_indptr=qo,
            kv_page_indices=pages,
            kv_page_indptr=pindptr,
            kv_last_page_len=last,
            output_rows=out_rows,
            samplers=desc.samplers,
            mask_runs=mask_runs,
            mask_indptr=mask_indptr,
            logit_mask_runs=lm_runs,
            logit_mask_indptr=lm_indptr,
        )

    def allowed_tokens(self, vocab_size: int) -> np.ndarray | None:
        """bool [O, V]: the vocabulary each output row may sample from, or None (no masks)."""
        if self.logit_mask_indptr is None or len(self.output_rows) == 0:
            return None
        reqs = self.output_requests()
        masks: dict[int, np.ndarray] = {}
        out = np.ones((len(self.output_rows), vocab_size), dtype=bool)
        for o, req in enumerate(reqs.tolist()):
            a, b = int(self.logit_mask_indptr[req]), int(self.logit_mask_indptr[req + 1])
            if b == a:
                continue  # an empty encoding means "no mask"
            m = masks.get(req)
            if m is None:
                m = masks[req] = _brle_to_bool(self.logit_mask_runs[a:b], vocab_size)
            out[o] = m
        return out


def _brle_to_bool(runs: np.ndarray, length: int) -> np.ndarray:
    """bool [length] from BRLE runs (alternating, starting with False), in one numpy call.

    Kept here rather than imported from the kernels so the dummy worker never imports torch.
    """
    out = np.repeat(np.arange(len(runs)) % 2 == 1, runs.astype(np.int64))
    if len(out) < length:  # uncovered ids at the end are masked out
        out = np.concatenate([out, np.zeros(length - len(out), dtype=bool)])
    return out
