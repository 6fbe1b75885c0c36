"""Paged attention over ragged batches that mix prefill and decode, and the KV write.

Layout of one layer's cache: `kv[layer]` is `[num_pages, 2, page_size, num_kv_heads, head_dim]`
(index 0 = K, 1 = V). A batch is described by CSR arrays (see `pie.ipc.messages`):
request r has query rows `qo_indptr[r]:qo_indptr[r+1]` and pages
`kv_page_indices[kv_page_indptr[r]:kv_page_indptr[r+1]]` whose last page holds
`kv_last_page_len[r]` tokens. The new tokens of request r occupy the last `n_r` KV slots.

`AttentionPlan.build` turns those arrays into gather/scatter indices once per batch; every layer
then calls `write_kv` and `paged_attention` with the same plan.

Masks: by default query row j of request r (0-based among its n_r rows, KV length L_r) sees
KV slots `[0, L_r - n_r + j]` (causal by slot). A custom mask gives, per query row, a BRLE
over the request's L_r slots (True = attend).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def brle_decode(runs: np.ndarray, length: int) -> np.ndarray:
    """Decode one binary run-length encoding (runs alternate, starting with False)."""
    out = np.zeros(length, dtype=bool)
    pos = 0
    val = False
    for r in runs.tolist():
        if val:
            out[pos : pos + r] = True
        pos += r
        val = not val
    if pos > length:
        raise ValueError(f"attention mask covers {pos} slots but the request has {length}")
    return out


@dataclass
class AttentionPlan:
    """Per-batch indices shared by every layer.

    Shapes: R requests, T new tokens, Q = max query rows per request, L = max KV length.
    """

    page_size: int
    # flat K rows of kv_layer.view(P*2*S, Hkv, D): page p, offset o -> 2*p*S + o (V: + S)
    write_slots: torch.Tensor  # [T] long: flat K row per new token
    gather_slots: torch.Tensor  # [R, L] long: flat K row of each KV position (0 where padded)
    query_rows: torch.Tensor  # [R, Q] long: row of the flat token array (0 where padded)
    query_valid: torch.Tensor  # [R, Q] bool
    mask: torch.Tensor  # [R, 1, Q, L] bool: True = attend
    num_tokens: int

    @staticmethod
    def build(
        qo_indptr: np.ndarray,
        kv_page_indices: np.ndarray,
        kv_page_indptr: np.ndarray,
        kv_last_page_len: np.ndarray,
        page_size: int,
        mask_runs: np.ndarray | None = None,
        mask_indptr: np.ndarray | None = None,
        device: torch.device | str = "cpu",
    ) -> AttentionPlan:
        qo_indptr = np.asarray(qo_indptr, dtype=np.int64)
        kv_page_indptr = np.asarray(kv_page_indptr, dtype=np.int64)
        kv_page_indices = np.asarray(kv_page_indices, dtype=np.int64)
        kv_last_page_len = np.asarray(kv_last_page_len, dtype=np.int64)
        num_req = len(qo_indptr) - 1
        n_q = np.diff(qo_indptr)
        n_pages = np.diff(kv_page_indptr)
        kv_len = np.where(n_pages > 0, (n_pages - 1) * page_size + kv_last_page_len, 0)
        if np.any(kv_len < n_q):
            r = int(np.argmax(kv_len < n_q))
            raise ValueError(
                f"request {r} writes {n_q[r]} tokens but its pages hold only {kv_len[r]} slots"
            )
        num_tokens = int(qo_indptr[-1])
        q_max = int(n_q.max()) if num_req else 0
        l_max = int(kv_len.max()) if num_req else 0

        gather = np.zeros((num_req, l_max), dtype=np.int64)
        qrows = np.zeros((num_req, q_max), dtype=np.int64)
        qvalid = np.zeros((num_req, q_max), dtype=bool)
        mask = np.zeros((num_req, 1, q_max, l_max), dtype=bool)
        write = np.zeros(num_tokens, dtype=np.int64)
        use_custom = mask_indptr is not None and len(mask_indptr) > 0
        for r in range(num_req):
            pages = kv_page_indices[kv_page_indptr[r] : kv_page_indptr[r + 1]]
            length = int(kv_len[r])
            # K of slot `off` in page p lives at flat row (2p)*S + off; V is S rows later
            slots = (pages[:, None] * (2 * page_size) + np.arange(page_size)[None, :]).reshape(-1)
            slots = slots[:length]
            gather[r, :length] = slots
            n = int(n_q[r])
            start = int(qo_indptr[r])
            write[start : start + n] = slots[length - n :]
            qrows[r, :n] = np.arange(start, start + n)
            qvalid[r, :n] = True
            for j in range(n):
                row = start + j
                if use_custom and mask_indptr[row + 1] > mask_indptr[row]:
                    mask[r, 0, j, :length] = brle_decode(
                        mask_runs[mask_indptr[row] : mask_indptr[row + 1]], length
                    )
                else:
                    mask[r, 0, j, : length - n + j + 1] = True
        dev = torch.device(device)
        return AttentionPlan(
            page_size=page_size,
            write_slots=torch.from_numpy(write).to(dev),
            gather_slots=torch.from_numpy(gather).to(dev),
            query_rows=torch.from_numpy(qrows).to(dev),
            query_valid=torch.from_numpy(qvalid).to(dev),
            mask=torch.from_numpy(mask).to(dev),
            num_tokens=num_tokens,
        )


def write_kv(kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> None:
    """Scatter new K/V rows into their pages.

    kv_layer: [P, 2, S, Hkv, D] contiguous; k, v: [T, Hkv, D].
    """
    num_pages, _, page_size, hkv, d = kv_layer.shape
    flat = kv_layer.view(num_pages * 2 * page_size, hkv, d)
    flat.index_copy_(0, plan.write_slots, k.to(kv_layer.dtype))
    flat.index_copy_(0, plan.write_slots + page_size, v.to(kv_layer.dtype))


def paged_attention(
    q: torch.Tensor, kv_layer: torch.Tensor, plan: AttentionPlan, scale: float | None = None
) -> torch.Tensor:
    """Attention of the batch's query rows over their paged KV.

    q: [T, Hq, D]; kv_layer: [P, 2, S, Hkv, D]. Returns [T, Hq, D]. GQA when Hq % Hkv == 0.
    """
    t, hq, d = q.shape
    num_pages, _, page_size, hkv, _ = kv_layer.shape
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    group = hq // hkv
    flat = kv_layer.view(num_pages * 2 * page_size, hkv, d)
    k = flat[plan.gather_slots]  # [R, L, Hkv, D]
    v = flat[plan.gather_slots + page_size]
    qb = q[plan.query_rows]  # [R, Q, Hq, D]
    qb = qb.transpose(1, 2)  # [R, Hq, Q, D]
    k = k.transpose(1, 2).repeat_interleave(group, dim=1).to(q.dtype)  # [R, Hq, L, D]
    v = v.transpose(1, 2).repeat_interleave(group, dim=1).to(q.dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        qb, k, v, attn_mask=plan.mask, scale=scale
    )  # [R, Hq, Q, D]
    out = out.transpose(1, 2)  # [R, Q, Hq, D]
    result = q.new_empty(t, hq, d)
    result[plan.query_rows[plan.query_valid]] = out[plan.query_valid]
    return result
