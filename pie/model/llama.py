"""The Llama-family decoder over a paged KV cache (Llama 2/3, SmolLM, Mistral, Qwen2/2.5, Qwen3).

Data flow of one batch (built by the worker from a `BatchDescriptor`):

    token_ids [T], positions [T]  ->  embedding [T, H]
      -> per layer: RMSNorm -> fused QKV -> (QK-norm) -> RoPE -> write_kv + paged_attention
                    -> o_proj (+ all-reduce) -> RMSNorm -> fused gate|up -> SiLU*up -> down (+ all-reduce)
      -> rows `output_rows` only: final RMSNorm -> LM head  ->  float32 logits [O, vocab]

Tokens of many requests are flattened into one ragged batch; what each token may attend to and
where its K/V goes is entirely in the `AttentionPlan` (`pie.kernels.attention`), built once per
batch. Prefill and decode are the same call. The model never allocates per-request state: the
KV pool is one tensor `[layers, pages, 2, page_size, kv_heads_local, head_dim]` owned by the
caller (`allocate_kv`).

Tensor parallelism (`tp_size > 1`): every rank holds the heads `[rank*H/tp, (rank+1)*H/tp)` of
q/k/v and its slice of the MLP's intermediate dimension (column shards), the matching input
slices of o_proj and down_proj (row shards), and all-reduces after those two. Embeddings and
the LM head are replicated.

Runtime quantization (`LlamaModel.quantize`, CPU, float32 activations): the four projections and
the LM head run as `Int8Linear` ("int8": int8 weights per output channel, int8 activations per
row, exact int32 products) or `Bf16Linear` ("bf16": bfloat16 weights prepacked for oneDNN,
which uses AMX tiles where the CPU has them); the embedding table, norms, attention and the KV
cache stay float32.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pie.kernels import cpu_kernels
from pie.kernels.attention import AttentionPlan, paged_attention, write_kv
from pie.model.config import ModelConfig
from pie.model.errors import ModelLoadError
from pie.model.rope import RotaryEmbedding, apply_rotary


class WeightSource(Protocol):
    """A checkpoint seen as HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...)."""

    def has(self, name: str) -> bool: ...
    def get(self, name: str) -> torch.Tensor: ...


# On CPU, batch-1 decode streams the LM head faster from a transposed copy; keep one when it
# costs at most this much memory.
HEAD_COPY_MAX_BYTES = 256 << 20


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


RUNTIME_QUANTS = ("", "int8", "bf16")


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: x [M, K] float32 ~= q * s with q int8 [M, K], s float32 [M, 1].

    Each row gets its own scale (absmax / 127), so a row's codes never depend on the other
    rows of the batch.
    """
    if x.numel() > 1 << 16:  # large: two reductions beat abs() (a full temporary) + one
        s = torch.maximum(x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True).neg_())
    else:  # small: fewer calls win
        s = x.abs().amax(dim=1, keepdim=True)
    # the same exact absmax either way; * (1/127) then + 1e-30 as two separately rounded ops
    # (an add with alpha is fused on torch's vector lanes but not on its scalar tail, which
    # would let a row's scale depend on where the row sits); the 1e-30 keeps an all-zero row
    # at 0 / 1e-30
    s = s.mul_(1.0 / 127.0).add_(1e-30)
    return torch.div(x, s).round_().to(torch.int8), s


def _cpu_ops():  # -> the loaded extension module or None
    """The C++ CPU kernels when they are built here (`pie.kernels.cpu_kernels`), else None."""
    return cpu_kernels.module()


# Rows from which `Int8Linear` uses oneDNN's prepacked product rather than `torch._int_mm`
# (measured on the default model: 1.6x faster at prefill sizes, about even at 64 rows, slower
# for one row, where its per-call cost dominates).
ONEDNN_MIN_ROWS = 32


class Int8Linear:
    """A linear layer with int8 weights for CPU: y = x W^T (+ b) from int8 codes.

    The weight is stored as int8 codes W_q [N, K] with one scale per output channel
    (s_w = absmax / 127): a quarter of the float32 memory. Each call quantizes the activations
    per row (`quantize_rows`), multiplies the codes exactly in int32 and rescales:

        y = (x_q @ W_q^T) * s_w[None, :] * s_x[:, None] (+ b)        float32 [M, N]

    For more than `ONEDNN_MIN_ROWS` rows the product runs on oneDNN with the codes prepacked
    once (`qlinear_pointwise`, which uses AMX int8 tiles where the CPU has them; activations go
    in as uint8 codes + 128 with a zero point of 128, the same integers); for fewer rows, or
    where oneDNN cannot run, on `torch._int_mm`, whose per-call cost is lower. Both round
    float(acc) * s_w, then * s_x, then + b, and integer accumulation is exact, so the two paths
    give the same bits and a row's result is the same whatever else is in the batch.
    """

    __slots__ = (
        "_bias_arg",
        "_zero_points",
        "bias",
        "in_features",
        "out_features",
        "packed",
        "scale",
        "weight_q",
    )

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min_(1e-30).div_(127.0)  # [N]
        self.weight_q = torch.div(w, scale[:, None]).round_().to(torch.int8).contiguous()  # [N, K]
        self.scale = scale.contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self._bias_arg = self.bias if self.bias is not None else torch.empty(0)
        self.out_features, self.in_features = w.shape
        self._zero_points = torch.zeros(self.out_features, dtype=torch.long)
        self.packed = self._prepack()

    def _prepack(self) -> object | None:
        """The codes in oneDNN's layout for `qlinear_pointwise`, or None if it cannot run."""
        if self.weight_q.device.type != "cpu":
            return None
        try:
            packed = torch.ops.onednn.qlinear_prepack(self.weight_q, None)
            probe = torch.full((1, self.in_features), 129, dtype=torch.uint8)
            self._onednn(probe, packed)
        except (AttributeError, RuntimeError, NotImplementedError):
            return None
        return packed

    def _onednn(self, x_u8: torch.Tensor, packed: object) -> torch.Tensor:
        """float32 acc * s_w of uint8 codes (zero point 128) against the packed weight."""
        return torch.ops.onednn.qlinear_pointwise(
            x_u8, 1.0, 128, packed, self.scale, self._zero_points, None,
            1.0, 0, torch.float32, "none", [], "",
        )  # fmt: skip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = self._rows(flat)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """[M, K] -> [M, N] on the cheapest path here; every path gives the same bits."""
        onednn = self._on_onednn(x)
        ops = _cpu_ops() if x.device.type == "cpu" else None
        if ops is not None:  # quantize and rescale as single C++ passes
            if not onednn:
                return ops.int8_linear(x, self.weight_q, self.scale, self._bias_arg)
            y, s_x = self._onednn_unscaled(x, ops)
            ops.scale_rows_(y, s_x, self._bias_arg)
            return y
        x_q, s_x = quantize_rows(x)
        if onednn:
            y = self._onednn((x_q.to(torch.int16) + 128).to(torch.uint8), self.packed)
        else:
            # int32 -> float32 first: an int32 * float32 product takes a slow mixed-type path
            y = torch._int_mm(x_q, self.weight_q.t()).float().mul_(self.scale)
        y = y.mul_(s_x)
        return y if self.bias is None else y.add_(self.bias)

    def unscaled(self, x: torch.Tensor, ops: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(y, s_x) with y = float(acc) * s_w still to be multiplied by each row's s_x, when
        the oneDNN path runs without a bias: the caller folds that multiplication into its
        next pass (`silu_mul`, `add_rms_norm_`, `add_scaled_`), rounded the same way.
        Otherwise (y, None) with y finished. `ops` is the C++ kernels module."""
        if self.bias is not None or not self._on_onednn(x):
            return self(x), None
        return self._onednn_unscaled(x, ops)

    def _on_onednn(self, x: torch.Tensor) -> bool:
        return self.packed is not None and x.shape[0] > ONEDNN_MIN_ROWS

    def _onednn_unscaled(self, x: torch.Tensor, ops: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x_u8, s_x = ops.quantize_rows_u8(x)
        return self._onednn(x_u8, self.packed), s_x

    def nbytes(self) -> int:
        b = 0 if self.bias is None else self.bias.nbytes
        return self.weight_q.nbytes + self.scale.nbytes + b


class Bf16Linear:
    """A linear layer with bfloat16 weights for CPU: y = x W^T (+ b), float32 in and out.

    The weight is converted to bfloat16 once and prepacked into oneDNN's blocked layout
    (`torch.ops.mkldnn._reorder_linear_weight`), so no call reorders it again; on CPUs with
    AMX the products run on its bfloat16 tile units. Each call rounds the activations to
    bfloat16, multiplies with float32 accumulation, and widens the bfloat16 result back to
    float32 (the bias is added in float32). Half the float32 weight memory.
    """

    __slots__ = ("bias", "in_features", "out_features", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        w = weight.detach().to(torch.bfloat16).contiguous()
        self.out_features, self.in_features = w.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, 1)
        self.bias = None if bias is None else bias.detach().float().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flat = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(
            flat.to(torch.bfloat16), self.packed, None, "none", [], ""
        ).float()
        if self.bias is not None:
            y = y.add_(self.bias)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def nbytes(self) -> int:
        b = 0 if self.bias is None else self.bias.nbytes
        return self.out_features * self.in_features * 2 + b


def check_quant(mode: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise `ModelLoadError` unless runtime quantization `mode` can run on device and dtype."""
    if mode not in RUNTIME_QUANTS:
        allowed = ", ".join(json.dumps(m) for m in RUNTIME_QUANTS)
        raise ModelLoadError(
            f"runtime_quant {json.dumps(mode)} is not supported; use one of {allowed}"
        )
    if mode == "":
        return
    if device.type != "cpu":
        raise ModelLoadError(
            f'runtime_quant = "{mode}" runs on CPU only, not on {device}; set '
            '[model.driver.options].runtime_quant = "" for this device'
        )
    if dtype != torch.float32:
        dt = str(dtype).removeprefix("torch.")
        raise ModelLoadError(
            f'runtime_quant = "{mode}" needs float32 activations, got {dt}; set '
            '[model.driver].activation_dtype = "float32", or runtime_quant = "" to keep '
            f"{dt} weights"
        )
    if mode == "bf16" and not torch.backends.mkldnn.is_available():
        raise ModelLoadError(
            'runtime_quant = "bf16" needs a torch build with oneDNN (mkldnn), which this one '
            'lacks; use runtime_quant = "int8" or ""'
        )


QuantLinear = Int8Linear | Bf16Linear
QUANT_LINEARS: dict[str, type[Int8Linear | Bf16Linear]] = {
    "int8": Int8Linear,
    "bf16": Bf16Linear,
}


_NO_SCALE = torch.empty(0)  # "no row scale" for the C++ passes that take one


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, q: QuantLinear | None):
    return F.linear(x, w, b) if q is None else q(x)


class DecoderLayer(nn.Module):
    """One pre-norm transformer block with fused QKV and gate|up projections."""

    def __init__(self, cfg: ModelConfig, tp_size: int, tp_group: object | None) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads // tp_size
        self.num_kv_heads = cfg.num_kv_heads // tp_size
        self.head_dim = cfg.head_dim
        self.eps = cfg.rms_norm_eps
        self.scale = cfg.head_dim**-0.5
        self.tp_size = tp_size
        self.tp_group = tp_group
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        inter = cfg.intermediate_size // tp_size
        self.inter = inter
        h = cfg.hidden_size
        e = torch.empty
        self.input_norm = _frozen(e(h))
        self.post_norm = _frozen(e(h))
        self.qkv_weight = _frozen(e(self.q_size + 2 * self.kv_size, h))
        self.qkv_bias = _frozen(e(self.q_size + 2 * self.kv_size)) if cfg.qkv_bias else None
        self.o_weight = _frozen(e(h, self.q_size))
        self.o_bias = _frozen(e(h)) if cfg.o_bias else None
        self.q_norm = _frozen(e(cfg.head_dim)) if cfg.qk_norm else None
        self.k_norm = _frozen(e(cfg.head_dim)) if cfg.qk_norm else None
        self.gate_up_weight = _frozen(e(2 * inter, h))
        self.gate_up_bias = _frozen(e(2 * inter)) if cfg.mlp_bias else None
        self.down_weight = _frozen(e(h, inter))
        self.down_bias = _frozen(e(h)) if cfg.mlp_bias else None
        # quantized replacements of the four projections (`LlamaModel.quantize`); None: float
        self.qkv_q: QuantLinear | None = None
        self.o_q: QuantLinear | None = None
        self.gate_up_q: QuantLinear | None = None
        self.down_q: QuantLinear | None = None

    def quantize(self, mode: str) -> None:
        """Replace the four projections by `QUANT_LINEARS[mode]`s and free their float weights."""
        cls = QUANT_LINEARS[mode]
        self.qkv_q = cls(self.qkv_weight, self.qkv_bias)
        self.o_q = cls(self.o_weight, None)
        self.gate_up_q = cls(self.gate_up_weight, self.gate_up_bias)
        self.down_q = cls(self.down_weight, None)
        for p in (self.qkv_weight, self.o_weight, self.gate_up_weight, self.down_weight):
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        for p in (self.qkv_bias, self.gate_up_bias):  # now held by the Int8Linear
            if p is not None:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)

    def _all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size > 1:
            torch.distributed.all_reduce(x, group=self.tp_group)
        return x

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        plan: AttentionPlan,
        kv_layer: torch.Tensor,
        ops: object = None,
    ) -> torch.Tensor:
        """One block; `ops` (the C++ CPU kernels, float32 on CPU) fuses the element-wise layers
        and then updates `x` in place (the caller's residual stream, which it owns)."""
        if ops is not None:
            return self._forward_fused(x, cos, sin, plan, kv_layer, ops)
        # x: [T, H] residual stream
        t = x.shape[0]
        h = F.rms_norm(x, x.shape[-1:], self.input_norm, self.eps)
        qkv = _linear(h, self.qkv_weight, self.qkv_bias, self.qkv_q)  # [T, (Hq + 2 Hkv) D]
        q, k, v = self._heads(qkv)
        if self.q_norm is not None:
            q = F.rms_norm(q, q.shape[-1:], self.q_norm, self.eps)
            k = F.rms_norm(k, k.shape[-1:], self.k_norm, self.eps)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        write_kv(kv_layer, k, v, plan)
        o = paged_attention(q, kv_layer, plan, scale=self.scale)  # [T, Hq, D]
        o = self._all_reduce(_linear(o.reshape(t, self.q_size), self.o_weight, None, self.o_q))
        if self.o_bias is not None:
            o = o + self.o_bias
        x = x + o
        h = F.rms_norm(x, x.shape[-1:], self.post_norm, self.eps)
        gate_up = _linear(h, self.gate_up_weight, self.gate_up_bias, self.gate_up_q)  # [T, 2 I]
        gate, up = gate_up.split([self.inter, self.inter], dim=-1)
        down = self._all_reduce(_linear(F.silu(gate) * up, self.down_weight, None, self.down_q))
        if self.down_bias is not None:
            down = down + self.down_bias
        return x + down

    def _heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, Hq, D], k and v [T, Hkv, D]: views of the fused projection's output."""
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return (
            q.view(t, self.num_heads, self.head_dim),
            k.view(t, self.num_kv_heads, self.head_dim),
            v.view(t, self.num_kv_heads, self.head_dim),
        )

    def _forward_fused(self, x, cos, sin, plan, kv_layer, ops) -> torch.Tensor:
        """The same block with the norms, RoPE, residual add and SiLU*up as single C++ passes."""
        t = x.shape[0]
        h = ops.rms_norm(x, self.input_norm, self.eps)
        qkv = _linear(h, self.qkv_weight, self.qkv_bias, self.qkv_q)  # [T, (Hq + 2 Hkv) D]
        if self.q_norm is None:
            # rotate the q and k heads of each row in place (they lead the row)
            ops.rope_(qkv, cos, sin, self.num_heads + self.num_kv_heads, self.head_dim)
        q, k, v = self._heads(qkv)
        if self.q_norm is not None:
            q = F.rms_norm(q, q.shape[-1:], self.q_norm, self.eps)
            k = F.rms_norm(k, k.shape[-1:], self.k_norm, self.eps)
            q = apply_rotary(q, cos[:, None], sin[:, None])
            k = apply_rotary(k, cos[:, None], sin[:, None])
        write_kv(kv_layer, k, v, plan)
        o = paged_attention(q, kv_layer, plan, scale=self.scale)  # [T, Hq, D]
        o, o_s = self._project(
            o.reshape(t, self.q_size), self.o_weight, self.o_q, ops, fold=self.o_bias is None,
            reduce=True,
        )
        if self.o_bias is not None:
            o = o + self.o_bias
        h = ops.add_rms_norm_(x, o.contiguous(), o_s, self.post_norm, self.eps)  # x += o
        gate_up, gu_s = self._project(
            h, self.gate_up_weight, self.gate_up_q, ops, self.gate_up_bias
        )  # [T, 2 I]
        down, down_s = self._project(
            ops.silu_mul(gate_up.contiguous(), gu_s), self.down_weight, self.down_q, ops,
            fold=self.down_bias is None, reduce=True,
        )
        if self.down_bias is not None:
            down = down + self.down_bias
        if down_s.numel():
            ops.add_scaled_(x, down, down_s)
            return x
        return x.add_(down)

    def _project(
        self, x, w, q, ops, b=None, fold=True, reduce=False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A projection whose int8 rescale by s_x may be left to the next C++ pass: (y, s_x),
        or (y, an empty tensor) when y is finished (other paths, a bias before or after it,
        tensor parallelism, whose all-reduce needs finished partial sums). `reduce`: a
        row-parallel projection, summed over the tensor-parallel ranks."""
        if fold and isinstance(q, Int8Linear) and self.tp_size == 1 and b is None:
            y, s = q.unscaled(x, ops)
            return y, _NO_SCALE if s is None else s
        y = _linear(x, w, b, q)
        return (self._all_reduce(y) if reduce else y), _NO_SCALE


class LlamaModel(nn.Module):
    """The decoder plus LM head; see the module docstring for the batch contract."""

    def __init__(
        self,
        cfg: ModelConfig,
        tp_rank: int = 0,
        tp_size: int = 1,
        tp_group: object | None = None,
        rope_freq_factors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        for what, n in (
            ("attention heads", cfg.num_heads),
            ("KV heads", cfg.num_kv_heads),
            ("MLP intermediate size", cfg.intermediate_size),
        ):
            if n % tp_size:
                raise ModelLoadError(
                    f"{cfg.source or cfg.name}: {what} ({n}) do not divide evenly over "
                    f"tensor_parallel_size {tp_size}; choose a tensor_parallel_size that divides {n}"
                )
        self.config = cfg
        self.tp_rank, self.tp_size, self.tp_group = tp_rank, tp_size, tp_group
        self.num_kv_heads_local = cfg.num_kv_heads // tp_size
        self.embed = _frozen(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, tp_size, tp_group) for _ in range(cfg.num_layers)
        )
        self.norm = _frozen(torch.empty(cfg.hidden_size))
        self.lm_head = (
            self.embed
            if cfg.tie_word_embeddings
            else _frozen(torch.empty(cfg.vocab_size, cfg.hidden_size))
        )
        self.rotary = RotaryEmbedding(
            cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, rope_freq_factors
        )
        self.lm_head_t: torch.Tensor | None = None  # [H, V] copy for single-row decode on CPU
        self.head_q: QuantLinear | None = None  # quantized LM head (`quantize`)
        self.quant = ""  # the runtime quantization applied: "", "int8" or "bf16"

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def allocate_kv(self, num_pages: int, page_size: int) -> torch.Tensor:
        """A zeroed KV pool: [num_layers, num_pages, 2, page_size, num_kv_heads_local, head_dim]."""
        c = self.config
        return torch.zeros(
            (c.num_layers, num_pages, 2, page_size, self.num_kv_heads_local, c.head_dim),
            dtype=self.dtype,
            device=self.device,
        )

    @torch.inference_mode()
    def forward_batch(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        plan: AttentionPlan,
        kv: torch.Tensor,
        output_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Run one ragged batch; returns float32 logits [O, vocab] for `output_rows` only.

        token_ids, positions: [T] long (positions are explicit RoPE positions per token);
        kv: the pool from `allocate_kv`, written in place at `plan.write_slots`.
        """
        x = F.embedding(token_ids, self.embed)  # [T, H]
        cos, sin = self.rotary(positions, x.dtype)  # [T, 1, D]
        ops = _cpu_ops() if x.device.type == "cpu" and x.dtype == torch.float32 else None
        if ops is not None:  # the fused layers take [T, D] tables and own x (updated in place)
            cos, sin = cos.view(cos.shape[0], -1), sin.view(sin.shape[0], -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, plan, kv[i], ops)
        x = x.index_select(0, output_rows)  # [O, H]: the head runs only where logits are wanted
        if ops is not None:
            x = ops.rms_norm(x, self.norm, self.config.rms_norm_eps)
        else:
            x = F.rms_norm(x, x.shape[-1:], self.norm, self.config.rms_norm_eps)
        if self.head_q is not None:
            return self.head_q(x)
        if self.lm_head_t is not None and x.shape[0] == 1:
            # single-row decode: a [H, V] layout streams the head ~1.7x faster on CPU BLAS
            return torch.mm(x, self.lm_head_t).float()
        return F.linear(x, self.lm_head).float()

    def quantize(self, mode: str) -> None:
        """Apply a runtime weight quantization after loading: "", "int8" or "bf16".

        "int8" and "bf16" (CPU, float32 activations): every projection (fused qkv, o, fused
        gate|up, down) and the LM head become `Int8Linear`s or `Bf16Linear`s and their float
        weights are freed. The embedding table stays float for the lookup; with tied
        embeddings the head gets its own copy of it. Logits stay float32. Under "int8" each row
        is quantized with its own scale and multiplied exactly, so a sequence's logits do not
        depend on the rest of its batch; "bf16" gives no such promise (oneDNN may block a
        product differently for another batch size).
        """
        check_quant(mode, self.device, self.dtype)
        if mode == "" or mode == self.quant:
            return
        if self.quant:
            raise ModelLoadError(f"the model is already quantized ({self.quant!r})")
        for layer in self.layers:
            layer.quantize(mode)
        self.head_q = QUANT_LINEARS[mode](self.lm_head, None)
        self.lm_head_t = None
        if self.lm_head is not self.embed:
            self.lm_head.data = torch.empty(0, dtype=self.dtype, device=self.device)
        self.quant = mode

    def weight_bytes(self) -> int:
        """Bytes held by the weights (float parameters plus int8 codes and scales)."""
        n = sum(p.nbytes for p in self.parameters())
        if self.lm_head_t is not None:
            n += self.lm_head_t.nbytes
        qs = [self.head_q] + [
            q
            for layer in self.layers
            for q in (layer.qkv_q, layer.o_q, layer.gate_up_q, layer.down_q)
        ]
        return n + sum(q.nbytes() for q in qs if q is not None)

    # --- loading ------------------------------------------------------------------------------

    def load_weights(self, src: WeightSource, dtype: torch.dtype, device: torch.device) -> None:
        """Fill every parameter from HF-named tensors, sharding for this rank, casting to dtype."""
        cfg = self.config
        r, n = self.tp_rank, self.tp_size
        d = cfg.head_dim

        def load(name: str) -> torch.Tensor:
            if not src.has(name):
                raise ModelLoadError(
                    f"{cfg.source}: tensor {name!r} is missing; the checkpoint is incomplete or "
                    "not a Llama-family model, re-download it"
                )
            return src.get(name)

        def rows(t: torch.Tensor, heads: int | None = None) -> torch.Tensor:
            # this rank's output rows: its heads (heads given) or an even slice (MLP)
            per = (heads // n) * d if heads is not None else t.shape[0] // n
            return t[r * per : (r + 1) * per]

        def cols(t: torch.Tensor) -> torch.Tensor:
            per = t.shape[1] // n
            return t[:, r * per : (r + 1) * per]

        def put(param: nn.Parameter, value: torch.Tensor, name: str) -> None:
            if tuple(value.shape) != tuple(param.shape):
                raise ModelLoadError(
                    f"{cfg.source}: tensor {name!r} has shape {tuple(value.shape)}, expected "
                    f"{tuple(param.shape)} from the model config; the files do not belong together"
                )
            param.data = value.to(device=device, dtype=dtype).contiguous()

        put(self.embed, load("model.embed_tokens.weight"), "model.embed_tokens.weight")
        put(self.norm, load("model.norm.weight"), "model.norm.weight")
        if not cfg.tie_word_embeddings:
            put(self.lm_head, load("lm_head.weight"), "lm_head.weight")
        else:
            self.lm_head = self.embed
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            put(layer.input_norm, load(p + "input_layernorm.weight"), p + "input_layernorm.weight")
            put(
                layer.post_norm,
                load(p + "post_attention_layernorm.weight"),
                p + "post_attention_layernorm.weight",
            )
            qkv = torch.cat(
                [
                    rows(load(a + "q_proj.weight"), cfg.num_heads),
                    rows(load(a + "k_proj.weight"), cfg.num_kv_heads),
                    rows(load(a + "v_proj.weight"), cfg.num_kv_heads),
                ]
            )
            put(layer.qkv_weight, qkv, a + "qkv_proj.weight")
            if layer.qkv_bias is not None:
                bias = torch.cat(
                    [
                        rows(load(a + "q_proj.bias"), cfg.num_heads),
                        rows(load(a + "k_proj.bias"), cfg.num_kv_heads),
                        rows(load(a + "v_proj.bias"), cfg.num_kv_heads),
                    ]
                )
                put(layer.qkv_bias, bias, a + "qkv_proj.bias")
            put(layer.o_weight, cols(load(a + "o_proj.weight")), a + "o_proj.weight")
            if layer.o_bias is not None:
                put(layer.o_bias, load(a + "o_proj.bias"), a + "o_proj.bias")
            if layer.q_norm is not None:
                put(layer.q_norm, load(a + "q_norm.weight"), a + "q_norm.weight")
                put(layer.k_norm, load(a + "k_norm.weight"), a + "k_norm.weight")
            m = p + "mlp."
            gate_up = torch.cat(
                [rows(load(m + "gate_proj.weight")), rows(load(m + "up_proj.weight"))]
            )
            put(layer.gate_up_weight, gate_up, m + "gate_up_proj.weight")
            if layer.gate_up_bias is not None:
                bias = torch.cat([rows(load(m + "gate_proj.bias")), rows(load(m + "up_proj.bias"))])
                put(layer.gate_up_bias, bias, m + "gate_up_proj.bias")
            put(layer.down_weight, cols(load(m + "down_proj.weight")), m + "down_proj.weight")
            if layer.down_bias is not None:
                put(layer.down_bias, load(m + "down_proj.bias"), m + "down_proj.bias")
        self.rotary.to(device)
        head_bytes = self.lm_head.numel() * self.lm_head.element_size()
        if device.type == "cpu" and head_bytes <= HEAD_COPY_MAX_BYTES:
            self.lm_head_t = self.lm_head.detach().t().contiguous()
