"""Builds BatchDescriptors for tests: requests with their own pages, prefill or decode."""

from __future__ import annotations

from dataclasses import dataclass, field

from pie.ipc.channel import to_bytes
from pie.ipc.messages import BatchDescriptor, SamplerSpec


@dataclass
class Req:
    tokens: list[int]  # the new tokens of this pass
    start: int  # KV slots already filled before this pass
    pages: list[int]  # the request's pages (enough for start + len(tokens))
    sampler: SamplerSpec | None = field(default_factory=SamplerSpec)  # on the last token
    logit_mask: list[int] | None = None  # BRLE runs over the vocabulary


def batch(batch_id: int, reqs: list[Req], page_size: int = 16) -> BatchDescriptor:
    toks, pos, qo, pages, pindptr, last, out, samplers = [], [], [0], [], [0], [], [], []
    lm_runs, lm_indptr = [], [0]
    for r in reqs:
        n = len(r.tokens)
        kv_len = r.start + n
        npages = (kv_len + page_size - 1) // page_size
        assert npages <= len(r.pages), "give the request enough pages"
        toks += r.tokens
        pos += list(range(r.start, kv_len))
        qo.append(len(toks))
        pages += r.pages[:npages]
        pindptr.append(len(pages))
        last.append(kv_len - (npages - 1) * page_size)
        if r.sampler is not None:
            out.append(len(toks) - 1)
            samplers.append(r.sampler)
        lm_runs += r.logit_mask or []
        lm_indptr.append(len(lm_runs))
    any_mask = any(r.logit_mask for r in reqs)
    return BatchDescriptor(
        batch_id=batch_id,
        token_ids=to_bytes(toks, "int32"),
        positions=to_bytes(pos, "int32"),
        qo_indptr=to_bytes(qo, "int32"),
        kv_page_indices=to_bytes(pages, "int32"),
        kv_page_indptr=to_bytes(pindptr, "int32"),
        kv_last_page_len=to_bytes(last, "int32"),
        output_rows=to_bytes(out, "int32"),
        samplers=samplers,
        logit_mask_runs=to_bytes(lm_runs, "uint32") if any_mask else b"",
        logit_mask_indptr=to_bytes(lm_indptr, "int32") if any_mask else b"",
    )


def replace(desc: BatchDescriptor, **changes) -> BatchDescriptor:
    fields = {f: getattr(desc, f) for f in desc.__struct_fields__}
    fields.update(changes)
    return BatchDescriptor(**fields)
