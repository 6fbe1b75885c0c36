"""Paged attention over ragged batches that mix prefill and decode, and the KV write.

Owns the attention math of the engine: the model layer calls `AttentionPlan.build` once per
batch, then `write_kv` and `paged_attention` once per layer. Nothing else in the project computes
attention.

Layout of one layer's cache: `kv[layer]` is `[num_pages, 2, page_size, num_kv_heads, head_dim]`
(index 0 = K, 1 = V). A batch is described by CSR arrays (see `pie.ipc.messages`):
request r has query rows `qo_indptr[r]:qo_indptr[r+1]` and pages
`kv_page_indices[kv_page_indptr[r]:kv_page_indptr[r+1]]` whose last page holds
`kv_last_page_len[r]` tokens. The new tokens of request r occupy the last `n_r` KV slots.

Masks: by default query row j of request r (0-based among its n_r rows, KV length L_r) sees
KV slots `[0, L_r - n_r + j]` (causal by slot). A custom mask gives, per query row, a BRLE
over the request's L_r slots (True = attend). A query row that may attend to nothing gets zeros.

Three implementations share these semantics:

* `paged_attention_triton` / `write_kv_triton`: Triton kernels (one program per request, KV head
  and block of query rows; the GQA group's query heads are folded into the rows of one `tl.dot`,
  so every K/V page is read once per group). fp32/fp16/bf16 inputs, fp32 accumulation.
* the torch path: gathered KV + `scaled_dot_product_attention`, with q viewed as
  `[R, Hkv, group*Q, D]` so GQA never materialises repeated K/V. This is what CPUs run.
* `paged_attention_reference`: float64, one request at a time, for tests.

`paged_attention` and `write_kv` dispatch: Triton on CUDA tensors, torch elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl

from pie.kernels import cpu_kernels
from pie.kernels.brle import brle_decode

__all__ = [
    "AttentionPlan",
    "brle_decode",
    "paged_attention",
    "paged_attention_reference",
    "paged_attention_triton",
    "write_kv",
    "write_kv_triton",
]

# --- the per-batch plan -----------------------------------------------------------------------


def _causal_mask(kv_len: np.ndarray, n_q: np.ndarray, q_max: int, l_max: int) -> np.ndarray:
    """[R, Q, L] bool: row j of request r sees slots <= L_r - n_r + j; padded rows see slot 0
    (so no row is empty)."""
    jq = np.arange(q_max)
    qvalid = jq[None, :] < n_q[:, None]
    limit = (kv_len - n_q)[:, None] + jq[None, :]  # [R, Q]
    mask = np.arange(l_max)[None, None, :] <= limit[:, :, None]
    mask &= qvalid[:, :, None]
    if l_max:
        mask[:, :, 0] |= ~qvalid
    return mask


def _overlay_custom_masks(
    mask: np.ndarray,
    runs: np.ndarray,
    indptr: np.ndarray,
    req_of_token: np.ndarray,
    j_of_token: np.ndarray,
    kv_len: np.ndarray,
) -> bool:
    """Write every token's BRLE mask over its causal row of `mask` [R, Q, L], in one pass.

    All custom rows are decoded together (run values by parity, `np.repeat`, one scatter), so
    a tree-attention batch with thousands of masked tokens costs no Python loop per token.
    Returns whether any token carried a custom mask.
    """
    counts = np.diff(indptr)
    tokens = np.nonzero(counts > 0)[0]
    if tokens.size == 0:
        return False
    if runs.size and int(runs.min()) < 0:
        raise ValueError("run lengths of an attention mask must be non-negative")
    run_token = np.repeat(np.arange(len(counts)), counts)  # token of every run
    covered = np.bincount(run_token, weights=runs, minlength=len(counts)).astype(np.int64)
    over = covered[tokens] > kv_len[req_of_token[tokens]]
    if over.any():
        t = int(tokens[np.argmax(over)])
        r = int(req_of_token[t])
        raise ValueError(
            f"attention mask of token {t} (request {r}) covers {covered[t]} slots but the "
            f"request has only {kv_len[r]}"
        )
    rows_r, rows_j = req_of_token[tokens], j_of_token[tokens]
    mask[rows_r, rows_j, :] = False  # a custom row replaces the causal default
    run_value = (np.arange(runs.size) - indptr[run_token]) & 1  # runs alternate False, True
    on = run_value.astype(bool) & (runs > 0)
    # every allowed slot: the run's start within its token's row, plus 0..len-1
    run_start = np.cumsum(runs) - runs - np.repeat(np.cumsum(covered) - covered, counts)
    lens = runs[on]
    slot = np.repeat(run_start[on] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
    tok = np.repeat(run_token[on], lens)
    mask[req_of_token[tok], j_of_token[tok], slot] = True
    return True


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
    num_tokens: int
    # --- used by the Triton kernels and the torch fast paths ---
    qo_indptr: torch.Tensor | None = None  # [R+1] int32
    kv_lens: torch.Tensor | None = None  # [R] int32
    page_table: torch.Tensor | None = None  # [R, max pages] int32 (0 where padded)
    has_custom_mask: bool = False
    dense_queries: bool = False  # every request has Q rows, so [R, Q] rows == the flat T rows
    _group_masks: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _buffers: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _kv_slots: torch.Tensor | None = field(default=None, repr=False)
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _mask_source: tuple[np.ndarray, np.ndarray, int, int] | None = field(default=None, repr=False)
    _subsets: dict[int, AttentionPlan | None] = field(default_factory=dict, repr=False)

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
        """Turn a batch's CSR arrays into gather/scatter indices (numpy, no loop per request)."""
        qo_indptr = np.asarray(qo_indptr, dtype=np.int64)
        kv_page_indptr = np.asarray(kv_page_indptr, dtype=np.int64)
        kv_page_indices = np.asarray(kv_page_indices, dtype=np.int64)
        kv_last_page_len = np.asarray(kv_last_page_len, dtype=np.int64)
        num_req = len(qo_indptr) - 1
        if len(kv_page_indptr) != num_req + 1 or len(kv_last_page_len) != num_req:
            raise ValueError(
                f"qo_indptr describes {num_req} requests but kv_page_indptr has "
                f"{len(kv_page_indptr)} entries and kv_last_page_len {len(kv_last_page_len)}; "
                "send R+1, R+1 and R entries"
            )
        n_q = np.diff(qo_indptr)
        n_pages = np.diff(kv_page_indptr)
        bad = (n_pages > 0) & ((kv_last_page_len < 1) | (kv_last_page_len > page_size))
        if np.any(bad):
            r = int(np.argmax(bad))
            raise ValueError(
                f"request {r} says its last page holds {kv_last_page_len[r]} tokens; "
                f"send a count between 1 and the page size ({page_size})"
            )
        kv_len = np.where(n_pages > 0, (n_pages - 1) * page_size + kv_last_page_len, 0)
        if np.any(kv_len < n_q):
            r = int(np.argmax(kv_len < n_q))
            raise ValueError(
                f"request {r} writes {n_q[r]} tokens but its pages hold only {kv_len[r]} slots"
            )
        num_tokens = int(qo_indptr[-1]) if num_req else 0
        q_max = int(n_q.max()) if num_req else 0
        l_max = int(kv_len.max()) if num_req else 0
        p_max = int(n_pages.max()) if num_req else 0

        # page table [R, p_max]: physical page of each logical page (0 where padded)
        lp = np.arange(p_max)
        pidx = kv_page_indptr[:-1, None] + lp[None, :]
        page_valid = lp[None, :] < n_pages[:, None]
        if kv_page_indices.size:
            table = np.where(
                page_valid, kv_page_indices[np.minimum(pidx, kv_page_indices.size - 1)], 0
            )
        else:
            table = np.zeros((num_req, p_max), dtype=np.int64)

        # K of slot `off` in page p lives at flat row (2p)*S + off; V is S rows later
        pos = np.arange(l_max)
        pos_valid = pos[None, :] < kv_len[:, None]
        gather = table[:, pos // page_size] * (2 * page_size) + (pos % page_size)[None, :]
        gather = np.where(pos_valid, gather, 0)

        # new tokens: token t of request r is its row j = t - qo_indptr[r], at KV slot L_r - n_r + j
        req_of_token = np.repeat(np.arange(num_req), n_q)
        j_of_token = np.arange(num_tokens) - qo_indptr[req_of_token]
        slot_of_token = kv_len[req_of_token] - n_q[req_of_token] + j_of_token
        write = gather[req_of_token, slot_of_token] if num_tokens else np.zeros(0, np.int64)

        jq = np.arange(q_max)
        qvalid = jq[None, :] < n_q[:, None]
        qrows = np.where(qvalid, qo_indptr[:-1, None] + jq[None, :], 0)

        dev = torch.device(device)
        mask = None
        has_custom = False
        if mask_indptr is not None and len(mask_indptr) > 0:
            mask_indptr = np.asarray(mask_indptr, dtype=np.int64)
            if len(mask_indptr) != num_tokens + 1:
                raise ValueError(
                    f"mask_indptr has {len(mask_indptr)} entries for {num_tokens} tokens; "
                    "send one entry per token plus one, or none for causal attention"
                )
            if np.any(np.diff(mask_indptr) > 0):
                mask = _causal_mask(kv_len, n_q, q_max, l_max)
                has_custom = _overlay_custom_masks(
                    mask,
                    np.asarray(mask_runs, dtype=np.int64),
                    mask_indptr,
                    req_of_token,
                    j_of_token,
                    kv_len,
                )

        def put(a: np.ndarray, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=dev, dtype=dtype)

        return AttentionPlan(
            page_size=page_size,
            write_slots=put(write),
            gather_slots=put(gather),
            query_rows=put(qrows),
            query_valid=put(qvalid, torch.bool),
            num_tokens=num_tokens,
            qo_indptr=put(qo_indptr, torch.int32),
            kv_lens=put(kv_len, torch.int32),
            page_table=put(table, torch.int32),
            has_custom_mask=has_custom,
            dense_queries=num_req * q_max == num_tokens,
            _mask=None if mask is None else put(mask[:, None], torch.bool),
            _mask_source=(kv_len, n_q, q_max, l_max),
        )

    @property
    def mask(self) -> torch.Tensor:
        """[R, 1, Q, L] bool, True = attend: causal by slot or the custom rows.

        The Triton kernel computes causal masks itself, so on CUDA this is only built when
        something asks for it.
        """
        if self._mask is None:
            assert self._mask_source is not None and self.kv_lens is not None
            dense = _causal_mask(*self._mask_source)[:, None]
            self._mask = torch.from_numpy(dense).to(self.kv_lens.device)
        return self._mask

    def gather_kv_slots(self) -> torch.Tensor:
        """Flat K rows then flat V rows of every KV position: [2*R*L] long (cached)."""
        if self._kv_slots is None:
            flat = self.gather_slots.reshape(-1)
            self._kv_slots = torch.cat([flat, flat + self.page_size])
        return self._kv_slots

    def gather_buffer(
        self, dtype: torch.dtype, device: torch.device, shape: tuple[int, ...]
    ) -> torch.Tensor:
        """A scratch tensor for gathered K/V, allocated once per batch and dtype."""
        key = (dtype, device)
        buf = self._buffers.get(key)
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf

    def group_mask(self, group: int) -> torch.Tensor:
        """`mask` with each query row repeated `group` times: [R, 1, group*Q, L] (cached)."""
        m = self._group_masks.get(group)
        if m is None:
            r, _, q, l_max = self.mask.shape
            if q == 1:
                m = self.mask  # broadcasts over the group rows
            else:
                m = self.mask.expand(r, group, q, l_max).reshape(r, 1, group * q, l_max)
            self._group_masks[group] = m
        return m

    def long_requests(self, max_pairs: int) -> AttentionPlan | None:
        """The plan restricted to the requests the C++ kernel leaves to the torch path (more
        than one query row and more than `max_pairs` (query row, key) pairs; cached).

        None when there are none. The subset keeps the flat token numbering of the whole
        batch (its `query_rows` index the batch's q), so its result rows scatter into the
        batch's output; its gather, mask and padding cover only those requests.
        """
        if max_pairs in self._subsets:
            return self._subsets[max_pairs]
        assert self._mask_source is not None
        kv_len, n_q, _, _ = self._mask_source
        idx = np.nonzero(~cpu_kernels.kernel_takes(n_q, kv_len, max_pairs))[0]
        sub = None
        if idx.size:
            q_sub, l_sub = int(n_q[idx].max()), int(kv_len[idx].max())
            t = torch.from_numpy(idx).to(self.gather_slots.device)
            sub = AttentionPlan(
                page_size=self.page_size,
                write_slots=self.write_slots,
                gather_slots=self.gather_slots[t, :l_sub].contiguous(),
                query_rows=self.query_rows[t, :q_sub].contiguous(),
                query_valid=self.query_valid[t, :q_sub].contiguous(),
                num_tokens=self.num_tokens,
                has_custom_mask=self.has_custom_mask,
                dense_queries=False,
                _mask=self.mask[t, :, :q_sub, :l_sub].contiguous(),
            )
        self._subsets[max_pairs] = sub
        return sub


# --- launcher checks --------------------------------------------------------------------------

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_attention_inputs(q: torch.Tensor, kv_layer: torch.Tensor, plan: AttentionPlan) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, q_heads, head_dim], got shape {tuple(q.shape)}")
    if kv_layer.dim() != 5 or kv_layer.shape[1] != 2:
        raise ValueError(
            "kv_layer must be [pages, 2, page_size, kv_heads, head_dim], "
            f"got shape {tuple(kv_layer.shape)}"
        )
    if q.dtype not in _FLOAT_DTYPES or kv_layer.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"q and kv_layer must be fp32/fp16/bf16, got {q.dtype} and {kv_layer.dtype}"
        )
    if q.shape[2] != kv_layer.shape[4]:
        raise ValueError(f"q head_dim {q.shape[2]} differs from the cache's {kv_layer.shape[4]}")
    if q.shape[1] % kv_layer.shape[3]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of KV heads ({kv_layer.shape[3]})"
        )
    if q.shape[0] != plan.num_tokens:
        raise ValueError(f"q has {q.shape[0]} rows but the plan describes {plan.num_tokens} tokens")
    if kv_layer.shape[2] != plan.page_size:
        raise ValueError(
            f"kv_layer pages hold {kv_layer.shape[2]} tokens but the plan uses {plan.page_size}"
        )
    if q.device != kv_layer.device:
        raise ValueError(f"q is on {q.device} but kv_layer is on {kv_layer.device}")


def _check_write_inputs(
    kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan
) -> None:
    if kv_layer.dim() != 5 or kv_layer.shape[1] != 2:
        raise ValueError(
            "kv_layer must be [pages, 2, page_size, kv_heads, head_dim], "
            f"got shape {tuple(kv_layer.shape)}"
        )
    want = (plan.num_tokens, kv_layer.shape[3], kv_layer.shape[4])
    if tuple(k.shape) != want or tuple(v.shape) != want:
        raise ValueError(f"k and v must be {list(want)}, got {list(k.shape)} and {list(v.shape)}")
    if not kv_layer.is_contiguous():
        raise ValueError("kv_layer must be contiguous")


# --- torch path (CPU, and any device without Triton) ------------------------------------------


def _write_kv_torch(
    kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan
) -> None:
    num_pages, _, page_size, hkv, d = kv_layer.shape
    flat = kv_layer.view(num_pages * 2 * page_size, hkv, d)
    flat.index_copy_(0, plan.write_slots, k.to(kv_layer.dtype))
    flat.index_copy_(0, plan.write_slots + page_size, v.to(kv_layer.dtype))


def _paged_attention_torch(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    plan: AttentionPlan,
    scale: float | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The gather + SDPA path; with `out`, writes only the plan's query rows into it."""
    t, hq, d = q.shape
    num_pages, _, page_size, hkv, _ = kv_layer.shape
    group = hq // hkv
    r, qn = plan.query_rows.shape
    l_max = plan.gather_slots.shape[1]
    if r == 0 or t == 0:
        return q.new_zeros(t, hq, d) if out is None else out
    flat = kv_layer.view(num_pages * 2 * page_size, hkv, d)
    # K and V rows in one gather, into a buffer reused by every layer of the batch: writing
    # into already-faulted memory is ~5x faster than a fresh allocation per call
    kv = plan.gather_buffer(kv_layer.dtype, kv_layer.device, (2, r, l_max, hkv, d))
    torch.index_select(flat, 0, plan.gather_kv_slots(), out=kv.view(2 * r * l_max, hkv, d))
    k = kv[0].transpose(1, 2)  # [R, Hkv, L, D]
    v = kv[1].transpose(1, 2)
    if k.dtype != q.dtype:
        k, v = k.to(q.dtype), v.to(q.dtype)
    qb = q.reshape(r, qn, hq, d) if plan.dense_queries else q[plan.query_rows]  # [R, Q, Hq, D]
    # the group's query heads act as extra query rows of their KV head: no K/V repeat
    qg = qb.view(r, qn, hkv, group, d).permute(0, 2, 3, 1, 4).reshape(r, hkv, group * qn, d)
    o = torch.nn.functional.scaled_dot_product_attention(
        qg, k, v, attn_mask=plan.group_mask(group), scale=scale
    )  # [R, Hkv, G*Q, D]
    if plan.has_custom_mask:
        o = torch.nan_to_num_(o, nan=0.0)  # a row that may attend to nothing gives zeros
    o = o.view(r, hkv, group, qn, d).permute(0, 3, 1, 2, 4).reshape(r, qn, hq, d)
    if plan.dense_queries and out is None:
        return o.reshape(t, hq, d)
    result = q.new_empty(t, hq, d) if out is None else out
    result[plan.query_rows[plan.query_valid]] = o[plan.query_valid].to(result.dtype)
    return result


# --- Triton path ------------------------------------------------------------------------------


@triton.jit
def _paged_attention_kernel(
    Q,
    KV,
    Out,
    QoIndptr,
    PageTable,
    KvLens,
    Mask,
    scale,
    stride_qt,
    stride_qh,
    stride_kvp,
    stride_kvkv,
    stride_kvs,
    stride_kvh,
    stride_ot,
    stride_oh,
    stride_pt,
    stride_mr,
    stride_mq,
    GROUP: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    PAGES_PER_ITER: tl.constexpr,
    HAS_MASK: tl.constexpr,
    DOT_F32: tl.constexpr,
    IEEE: tl.constexpr,
):
    # grid: (request, kv head, block of BLOCK_Q query rows). Row m of the tile is query row
    # j = m // GROUP and query head kvh*GROUP + m % GROUP, so one tl.dot serves the whole group.
    r = tl.program_id(0)
    kvh = tl.program_id(1)
    qb = tl.program_id(2)
    q_start = tl.load(QoIndptr + r)
    n_q = tl.load(QoIndptr + r + 1) - q_start
    if qb * BLOCK_Q < n_q:
        kv_len = tl.load(KvLens + r)
        offs_m = tl.arange(0, BLOCK_M)
        j = qb * BLOCK_Q + offs_m // GROUP
        head = kvh * GROUP + offs_m % GROUP
        m_valid = (offs_m < BLOCK_Q * GROUP) & (j < n_q)
        offs_d = tl.arange(0, BLOCK_D)
        d_valid = offs_d < HEAD_DIM
        tok = (q_start + j).to(tl.int64)
        q = tl.load(
            Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
            mask=m_valid[:, None] & d_valid[None, :],
            other=0.0,
        )  # read BLOCK_M*D
        if DOT_F32:
            q = q.to(tl.float32)
        limit = kv_len - n_q + j  # causal: last visible slot per row

        BLOCK_N: tl.constexpr = PAGE_SIZE * PAGES_PER_ITER
        offs_n = tl.arange(0, BLOCK_N)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        if HAS_MASK:
            end = kv_len
        else:
            last_j = tl.minimum(qb * BLOCK_Q + BLOCK_Q, n_q) - 1
            end = kv_len - n_q + last_j + 1  # slots past this are masked for every row
        for start in range(0, end, BLOCK_N):
            pos = start + offs_n
            n_valid = pos < kv_len
            page = tl.load(PageTable + r * stride_pt + pos // PAGE_SIZE, mask=n_valid, other=0)
            base = (
                page.to(tl.int64) * stride_kvp + (pos % PAGE_SIZE) * stride_kvs + kvh * stride_kvh
            )
            kv_mask = n_valid[:, None] & d_valid[None, :]
            k = tl.load(KV + base[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)  # N*D
            if DOT_F32:
                # the interpreter multiplies raw bf16 bit patterns in tl.dot; upcast there only
                k = k.to(tl.float32)
            if IEEE:
                qk = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                qk = tl.dot(q, tl.trans(k))
            qk = qk * scale  # [BLOCK_M, BLOCK_N] fp32
            if HAS_MASK:
                allowed = (
                    tl.load(
                        Mask + r.to(tl.int64) * stride_mr + j[:, None] * stride_mq + pos[None, :],
                        mask=m_valid[:, None] & n_valid[None, :],
                        other=0,
                    )
                    != 0
                )
            else:
                allowed = pos[None, :] <= limit[:, None]
            allowed = allowed & n_valid[None, :]
            qk = tl.where(allowed, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(qk - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(KV + stride_kvkv + base[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
            if DOT_F32:
                v = v.to(tl.float32)
            if IEEE:
                pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(
            Out + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
            out.to(Out.dtype.element_ty),
            mask=m_valid[:, None] & d_valid[None, :],
        )  # write BLOCK_M*D


@triton.jit
def _write_kv_kernel(
    K,
    V,
    KV,
    Slots,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kvp,
    stride_kvkv,
    stride_kvs,
    stride_kvh,
    NUM_HEADS: tl.constexpr,
    BLOCK_H: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
):
    # one program per new token: read 2*Hkv*D, write 2*Hkv*D
    t = tl.program_id(0)
    flat = tl.load(Slots + t)  # flat K row 2*p*S + o
    page = flat // (2 * PAGE_SIZE)
    off = flat % (2 * PAGE_SIZE)
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    valid = (h < NUM_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
    dst = KV + page * stride_kvp + off * stride_kvs + h[:, None] * stride_kvh + d[None, :]
    k = tl.load(K + t * stride_kt + h[:, None] * stride_kh + d[None, :], mask=valid)
    tl.store(dst, k.to(KV.dtype.element_ty), mask=valid)
    v = tl.load(V + t * stride_vt + h[:, None] * stride_vh + d[None, :], mask=valid)
    tl.store(dst + stride_kvkv, v.to(KV.dtype.element_ty), mask=valid)


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def paged_attention_triton(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    plan: AttentionPlan,
    scale: float | None = None,
    pages_per_iter: int | None = None,
) -> torch.Tensor:
    """The Triton kernel behind `paged_attention` (call that instead; this is for tests/benches)."""
    _check_attention_inputs(q, kv_layer, plan)
    assert plan.qo_indptr is not None and plan.kv_lens is not None and plan.page_table is not None
    t, hq, d = q.shape
    _, _, page_size, hkv, _ = kv_layer.shape
    group = hq // hkv
    if q.stride(-1) != 1 or kv_layer.stride(-1) != 1:
        raise ValueError("q and kv_layer must be contiguous in head_dim")
    interp = _interpreting()
    # the interpreter truncates fp32 -> bf16 on store instead of rounding: store fp32 there
    out_bf16 = interp and q.dtype == torch.bfloat16
    out = torch.empty(q.shape, dtype=torch.float32 if out_bf16 else q.dtype, device=q.device)
    num_req = plan.kv_lens.shape[0]
    if t == 0 or num_req == 0:
        return out
    q_max = plan.query_rows.shape[1]
    block_q = 1 if q_max == 1 else max(1, 64 // group)
    block_m = max(16, triton.next_power_of_2(block_q * group))
    if pages_per_iter is None:
        pages_per_iter = max(1, 64 // page_size)
    pages_per_iter = max(pages_per_iter, -(-16 // page_size))  # tl.dot needs N >= 16
    dot_f32 = interp and (q.dtype == torch.bfloat16 or kv_layer.dtype == torch.bfloat16)
    if kv_layer.dtype != q.dtype and not dot_f32:
        dot_f32 = True  # mixed cache/query dtypes: compute the dots in fp32
    if plan.has_custom_mask:
        mask = plan.mask.view(torch.uint8)
        stride_mr, stride_mq = mask.stride(0), mask.stride(2)
    else:
        mask, stride_mr, stride_mq = plan.kv_lens, 0, 0
    grid = (num_req, hkv, triton.cdiv(q_max, block_q))
    _paged_attention_kernel[grid](
        q,
        kv_layer,
        out,
        plan.qo_indptr,
        plan.page_table,
        plan.kv_lens,
        mask,
        float(scale if scale is not None else d**-0.5),
        q.stride(0),
        q.stride(1),
        kv_layer.stride(0),
        kv_layer.stride(1),
        kv_layer.stride(2),
        kv_layer.stride(3),
        out.stride(0),
        out.stride(1),
        plan.page_table.stride(0),
        stride_mr,
        stride_mq,
        GROUP=group,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        HEAD_DIM=d,
        BLOCK_D=max(16, triton.next_power_of_2(d)),
        PAGE_SIZE=page_size,
        PAGES_PER_ITER=pages_per_iter,
        HAS_MASK=plan.has_custom_mask,
        DOT_F32=dot_f32,
        IEEE=(q.dtype == torch.float32 or dot_f32) and not interp,
    )
    return out.to(torch.bfloat16) if out_bf16 else out


def write_kv_triton(
    kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan
) -> None:
    """The Triton kernel behind `write_kv` (call that instead; this is for tests/benches)."""
    _check_write_inputs(kv_layer, k, v, plan)
    if plan.num_tokens == 0:
        return
    _, _, page_size, hkv, d = kv_layer.shape
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError("k and v must be contiguous in head_dim")
    if _interpreting() and kv_layer.dtype == torch.bfloat16:
        k, v = k.to(torch.bfloat16), v.to(torch.bfloat16)  # the interpreter truncates on store
    _write_kv_kernel[(plan.num_tokens,)](
        k,
        v,
        kv_layer,
        plan.write_slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        kv_layer.stride(0),
        kv_layer.stride(1),
        kv_layer.stride(2),
        kv_layer.stride(3),
        NUM_HEADS=hkv,
        BLOCK_H=triton.next_power_of_2(hkv),
        HEAD_DIM=d,
        BLOCK_D=triton.next_power_of_2(d),
        PAGE_SIZE=page_size,
    )


# --- public entry points (dispatch) -----------------------------------------------------------


def write_kv(kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan) -> None:
    """Scatter new K/V rows into their pages.

    kv_layer: [P, 2, S, Hkv, D] contiguous; k, v: [T, Hkv, D].
    """
    if kv_layer.device.type == "cuda":
        write_kv_triton(kv_layer, k, v, plan)
        return
    _check_write_inputs(kv_layer, k, v, plan)
    _write_kv_torch(kv_layer, k, v, plan)


def paged_attention(
    q: torch.Tensor, kv_layer: torch.Tensor, plan: AttentionPlan, scale: float | None = None
) -> torch.Tensor:
    """Attention of the batch's query rows over their paged KV.

    q: [T, Hq, D]; kv_layer: [P, 2, S, Hkv, D]. Returns [T, Hq, D] in q's dtype. GQA when
    Hq % Hkv == 0. `scale` defaults to 1/sqrt(D).

    >>> plan = AttentionPlan.build([0, 1], [0], [0, 1], [1], page_size=16)
    >>> kv = torch.zeros(1, 2, 16, 2, 64); q = torch.randn(1, 4, 64)
    >>> write_kv(kv, torch.randn(1, 2, 64), torch.ones(1, 2, 64), plan)
    >>> paged_attention(q, kv, plan).shape
    torch.Size([1, 4, 64])
    """
    if q.device.type == "cuda":
        return paged_attention_triton(q, kv_layer, plan, scale)
    _check_attention_inputs(q, kv_layer, plan)
    cpu_causal = q.device.type == "cpu" and not plan.has_custom_mask and plan.num_tokens
    if cpu_causal and cpu_kernels.available():
        return _paged_attention_cpu(q, kv_layer, plan, scale)
    return _paged_attention_torch(q, kv_layer, plan, scale)


def _paged_attention_cpu(
    q: torch.Tensor, kv_layer: torch.Tensor, plan: AttentionPlan, scale: float | None
) -> torch.Tensor:
    """Decode rows and short causal blocks (drafts, short prefills) on the page-walking C++
    kernel; bigger blocks on the torch path, whose SDPA wins there (`kernel_takes`)."""
    assert plan.qo_indptr is not None and plan.page_table is not None
    assert plan.kv_lens is not None
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    max_pairs = cpu_kernels.KERNEL_MAX_PAIRS
    long = plan.long_requests(max_pairs)
    if long is not None and long.query_rows.shape[0] == plan.query_rows.shape[0]:
        return _paged_attention_torch(q, kv_layer, plan, scale)  # all long: nothing to split
    out = cpu_kernels.paged_attention_cpu(
        q, kv_layer, plan.qo_indptr, plan.page_table, plan.kv_lens, scale, max_pairs
    )
    if long is not None:
        _paged_attention_torch(q, kv_layer, long, scale, out=out)
    return out


# --- float64 reference ------------------------------------------------------------------------


def paged_attention_reference(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    qo_indptr: np.ndarray,
    kv_page_indices: np.ndarray,
    kv_page_indptr: np.ndarray,
    kv_last_page_len: np.ndarray,
    mask_runs: np.ndarray | None = None,
    mask_indptr: np.ndarray | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Obviously-correct float64 attention, one request and one query row at a time."""
    t, hq, d = q.shape
    _, _, page_size, hkv, _ = kv_layer.shape
    group = hq // hkv
    scale = scale if scale is not None else d**-0.5
    out = torch.zeros(t, hq, d, dtype=torch.float64)
    qo_indptr = np.asarray(qo_indptr)
    for r in range(len(qo_indptr) - 1):
        pages = torch.as_tensor(
            np.asarray(kv_page_indices)[kv_page_indptr[r] : kv_page_indptr[r + 1]]
        )
        n_pages = len(pages)
        length = (n_pages - 1) * page_size + int(kv_last_page_len[r]) if n_pages else 0
        kv = kv_layer[pages.long()].double().cpu()  # [np, 2, S, Hkv, D]
        k = kv[:, 0].reshape(-1, hkv, d)[:length].repeat_interleave(group, 1)  # [L, Hq, D]
        v = kv[:, 1].reshape(-1, hkv, d)[:length].repeat_interleave(group, 1)
        n = int(qo_indptr[r + 1] - qo_indptr[r])
        for j in range(n):
            row = int(qo_indptr[r]) + j
            if (
                mask_indptr is not None
                and len(mask_indptr)
                and mask_indptr[row + 1] > mask_indptr[row]
            ):
                allowed = torch.from_numpy(
                    brle_decode(
                        np.asarray(mask_runs)[mask_indptr[row] : mask_indptr[row + 1]], length
                    )
                )
            else:
                allowed = torch.arange(length) <= length - n + j
            if not bool(allowed.any()):
                continue
            s = torch.einsum("hd,lhd->hl", q[row].double().cpu(), k) * scale
            s = s.masked_fill(~allowed[None, :], float("-inf"))
            out[row] = torch.einsum("hl,lhd->hd", torch.softmax(s, -1), v)
    return out
