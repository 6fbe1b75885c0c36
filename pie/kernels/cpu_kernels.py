"""C++ kernels for CPUs, built once per machine: paged attention and the int8 linear layer.

`paged_attention_cpu`: a page-walking attention kernel for short query blocks. The torch path
of `pie.kernels.attention` copies every K/V slot a batch needs into a padded buffer
(`index_select`) and runs `scaled_dot_product_attention` on it. For decode-sized query blocks
that is wasteful twice over: the gather writes and re-reads all K/V, and SDPA's CPU kernel is
tuned for long query blocks, so a 1-3 row block per (request, KV head) costs far more than its
arithmetic. This kernel reads K/V straight from the pages instead:

    for every (request r, KV head h), in parallel over torch's intra-op threads:
        the n_r query rows of r times the `group` query heads of h form one block of rows;
        pass 1: walk r's slots through its page table, one K row at a time, and score it
                against every row that may see it (row j sees slots <= L_r - n_r + j);
        softmax each row over its visible prefix (float32);
        pass 2: walk the slots again and accumulate the V rows with those weights.

Same semantics as the torch path for causal batches (`pie.kernels.attention` sends it no
batch with custom masks). K/V may be float32, bfloat16 or float16 (read as float32); q and the
output are float32. Accumulation is float32 in a fixed order per row, so a row's result does
not depend on the other requests in its batch.

`int8_linear`: the whole of `pie.model.llama.Int8Linear` in one call. Each float32 row is
quantized to int8 with its own scale (absmax / 127, rounded half to even), the codes are
multiplied exactly by `at::_int_mm`, and the int32 products are rescaled (channel scale, then
row scale, then the bias) in one pass. The same arithmetic as the torch version, without
its nine separate element-wise passes, which dominate a decode step's linear layers.

`rms_norm`, `add_rms_norm_` (the residual add fused with the next norm), `silu_mul` and `rope_`
(rotate-half RoPE in place on the q and k heads of the fused qkv output): the element-wise
layers of a decoder block, one pass over the rows each instead of three to six torch ops.

Build: `torch.utils.cpp_extension.load_inline` (needs a C++ compiler and ninja), cached in
torch's extension directory under a name that includes a hash of the source and of this CPU's
instruction-set flags (the code is compiled with `-march=native`), so a cache carried to
another CPU is never loaded there. `available()` builds or loads it once per process and
answers False (with one warning in the log) if that fails; the torch path then serves.
`python -m pie.kernels.cpu_kernels` builds it ahead of time (the Makefile's setup does).
`PIE_CPU_KERNELS=0` turns the kernels off (the torch paths run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
from typing import Any

import torch

log = logging.getLogger(__name__)

# The kernel takes a request when it has one query row (decode), or when its query rows see
# at most this many (query row, key) pairs per head in all (short causal blocks: drafts, short
# prefills); bigger blocks go to SDPA, whose blocked GEMMs win there. At the default model's
# shapes the two cost the same near 1,500 pairs (a 32-row block over 64 keys; 64 over 64).
KERNEL_MAX_PAIRS = 1200


def kernel_takes(n_q: Any, kv_len: Any, max_pairs: int = KERNEL_MAX_PAIRS) -> Any:
    """Which requests (numpy arrays of query rows and KV lengths) the kernel computes; the
    C++ side applies the same integer test. pairs = sum over rows j of (kv_len - n_q + j + 1)."""
    n, kv = n_q.astype("int64"), kv_len.astype("int64")
    return (n <= 1) | (n * (2 * kv - n + 1) <= 2 * max_pairs)


_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// 8 floats: GCC/Clang vector extensions, lowered to AVX/AVX-512 or NEON by -march=native
typedef float v8f __attribute__((vector_size(32)));
typedef unsigned short v8h __attribute__((vector_size(16)));
typedef unsigned int v8u __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline v8f load8(const c10::BFloat16* p) {  // bfloat16 is the top half of a float32
  v8h h;
  std::memcpy(&h, p, sizeof h);
  v8u w = __builtin_convertvector(h, v8u) << 16;
  v8f f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}
inline v8f load8(const c10::Half* p) {
  float t[8];
  for (int i = 0; i < 8; ++i) t[i] = static_cast<float>(p[i]);
  return load8(t);
}
inline float hsum(v8f v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8f abs8(v8f v) {
  v8u u;
  std::memcpy(&u, &v, sizeof u);
  u &= 0x7fffffffu;
  std::memcpy(&v, &u, sizeof v);
  return v;
}
inline v8f max8(v8f a, v8f b) { return a > b ? a : b; }
// round half to even, exact for |v| <= 2^22 (adding 1.5 * 2^23 leaves no fraction bits);
// equals std::nearbyint there under the default rounding mode
inline v8f round_even8(v8f v) {
  const v8f magic = splat8(12582912.0f);
  return (v + magic) - magic;
}
// e^x per lane: x = n ln2 + r with |r| <= ln2 / 2, e^r from a degree-7 series, times 2^n
// (relative error ~1e-7; inputs are clamped to [-87, 88], where 2^n stays a normal float)
inline v8f exp8(v8f x) {
  x = x < splat8(-87.0f) ? splat8(-87.0f) : x;
  x = x > splat8(88.0f) ? splat8(88.0f) : x;
  const v8f n = round_even8(x * splat8(1.44269504088896341f));
  v8f r = x - n * splat8(0.693359375f);
  r = r - n * splat8(-2.12194440e-4f);
  v8f p = splat8(1.9875691500e-4f);
  p = p * r + splat8(1.3981999507e-3f);
  p = p * r + splat8(8.3334519073e-3f);
  p = p * r + splat8(4.1665795894e-2f);
  p = p * r + splat8(1.6666665459e-1f);
  p = p * r + splat8(5.0000001201e-1f);
  p = p * (r * r) + r + splat8(1.0f);
  v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}
inline float exp1(float x) {  // exp8 on one value: the same result as its lane would get
  float t[8] = {x, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  return exp8(load8(t))[0];
}

// C = head_dim / 8 when known at compile time (the common head sizes), 0 = at run time.
// GB query heads of one KV head are done together, so each K and V row is read once for all
// of them (the KV rows are the kernel's memory traffic); each head's arithmetic is the same
// sequence of operations whatever GB is.
template <typename kv_t, int C, int GB>
void attend_heads(const float* q, const kv_t* kv, int64_t t0, int64_t n, int64_t len,
                  const int32_t* tab, int64_t h, int64_t g0, float* out, int64_t hq,
                  int64_t dim, int64_t page_size, int64_t slot, int64_t page, int64_t group,
                  float scale, std::vector<float>& score, std::vector<v8f>& qv,
                  std::vector<v8f>& acc) {
  const int64_t chunks = C ? C : dim / 8;
  const int64_t first = len - n;  // query row j sees slots [0, first + j]
  const kv_t* base = kv + h * dim;
  score.resize(GB * len);
  qv.resize(GB * chunks);
  acc.resize(GB * chunks);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t visible = first + j + 1;
    for (int b = 0; b < GB; ++b) {
      const float* qr = q + ((t0 + j) * hq + h * group + g0 + b) * dim;
      for (int64_t c = 0; c < chunks; ++c) qv[b * chunks + c] = load8(qr + 8 * c) * scale;
    }
    float mx[GB];
    for (int b = 0; b < GB; ++b) mx[b] = -std::numeric_limits<float>::infinity();
    // slots in order, walking the page table (no division per slot)
    for (int64_t s = 0, p = 0, o = 0; s < visible; ++s) {
      const kv_t* k = base + tab[p] * page + o * slot;
      if (++o == page_size) o = 0, ++p;
      v8f a[GB];
      for (int b = 0; b < GB; ++b) a[b] = v8f{};
      for (int64_t c = 0; c < chunks; ++c) {
        const v8f kc = load8(k + 8 * c);
        for (int b = 0; b < GB; ++b) a[b] += qv[b * chunks + c] * kc;
      }
      for (int b = 0; b < GB; ++b) {
        const float x = hsum(a[b]);
        score[b * len + s] = x;
        mx[b] = std::max(mx[b], x);
      }
    }
    float total[GB];
    for (int b = 0; b < GB; ++b) {  // e^(score - max), 8 slots at a time, summed in a fixed order
      float* sb = score.data() + b * len;
      const v8f m8 = splat8(mx[b]);
      v8f t8 = splat8(0.f);
      int64_t t = 0;
      for (; t + 8 <= visible; t += 8) {
        const v8f e = exp8(load8(sb + t) - m8);
        store8(sb + t, e);
        t8 += e;
      }
      total[b] = hsum(t8);
      for (; t < visible; ++t) {
        sb[t] = exp1(sb[t] - mx[b]);
        total[b] += sb[t];
      }
    }
    // weighted sums of the V rows
    for (int64_t c = 0; c < GB * chunks; ++c) acc[c] = v8f{};
    for (int64_t t = 0, p = 0, o = 0; t < visible; ++t) {
      const kv_t* v = base + tab[p] * page + (page_size + o) * slot;
      if (++o == page_size) o = 0, ++p;
      for (int64_t c = 0; c < chunks; ++c) {
        const v8f vc = load8(v + 8 * c);
        for (int b = 0; b < GB; ++b) acc[b * chunks + c] += score[b * len + t] * vc;
      }
    }
    for (int b = 0; b < GB; ++b) {
      const float inv = 1.f / total[b];
      float* dst = out + ((t0 + j) * hq + h * group + g0 + b) * dim;
      for (int64_t c = 0; c < chunks; ++c) {
        v8f o = acc[b * chunks + c] * inv;
        std::memcpy(dst + 8 * c, &o, sizeof o);
      }
    }
  }
}

template <typename kv_t, int C>
void attend(const float* q, const kv_t* kv, const int32_t* qo, const int32_t* table,
            const int32_t* lens, float* out, int64_t num_req, int64_t hq, int64_t hkv,
            int64_t dim, int64_t page_size, int64_t pmax, float scale, int64_t max_pairs) {
  const int64_t group = hq / hkv;
  const int64_t slot = hkv * dim;              // one K (or V) slot of one page
  const int64_t page = 2 * page_size * slot;   // a page: page_size K slots, then V slots
  at::parallel_for(0, num_req * hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> score;
    std::vector<v8f> qv, acc;
    for (int64_t w = begin; w < end; ++w) {
      const int64_t r = w / hkv, h = w % hkv;
      const int64_t t0 = qo[r], n = qo[r + 1] - qo[r], len = lens[r];
      // bigger blocks are the caller's (the test of kernel_takes)
      if (n <= 0 || (n > 1 && n * (2 * len - n + 1) > 2 * max_pairs)) continue;
      const int32_t* tab = table + r * pmax;
      for (int64_t g0 = 0; g0 < group;) {  // the group's heads, up to 4 at a time
        const int64_t gb = std::min<int64_t>(4, group - g0);
#define PIE_ATTEND_HEADS(GB)                                                                 \
  attend_heads<kv_t, C, GB>(q, kv, t0, n, len, tab, h, g0, out, hq, dim, page_size, slot, page, \
                            group, scale, score, qv, acc)
        switch (gb) {
          case 4: PIE_ATTEND_HEADS(4); break;
          case 3: PIE_ATTEND_HEADS(3); break;
          case 2: PIE_ATTEND_HEADS(2); break;
          default: PIE_ATTEND_HEADS(1); break;
        }
#undef PIE_ATTEND_HEADS
        g0 += gb;
      }
    }
  });
}

template <typename kv_t>
void attend_any(const float* q, const kv_t* kv, const int32_t* qo, const int32_t* table,
                const int32_t* lens, float* out, int64_t num_req, int64_t hq, int64_t hkv,
                int64_t dim, int64_t page_size, int64_t pmax, float scale, int64_t max_pairs) {
  switch (dim) {
    case 64:
      return attend<kv_t, 8>(q, kv, qo, table, lens, out, num_req, hq, hkv, dim, page_size, pmax, scale, max_pairs);
    case 128:
      return attend<kv_t, 16>(q, kv, qo, table, lens, out, num_req, hq, hkv, dim, page_size, pmax, scale, max_pairs);
    default:
      return attend<kv_t, 0>(q, kv, qo, table, lens, out, num_req, hq, hkv, dim, page_size, pmax, scale, max_pairs);
  }
}

}  // namespace

// q [T, Hq, D] float32; kv_layer [P, 2, S, Hkv, D]; qo_indptr [R+1], page_table [R, pmax],
// kv_lens [R] int32. Returns [T, Hq, D] float32; the rows of requests kernel_takes rejects (more
// than one query row and more than max_pairs (row, key) pairs) are left unwritten.
torch::Tensor paged_attention(torch::Tensor q, torch::Tensor kv_layer, torch::Tensor qo_indptr,
                              torch::Tensor page_table, torch::Tensor kv_lens, double scale,
                              int64_t max_pairs) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(),
              "q must be a contiguous float32 [T, Hq, D] tensor");
  TORCH_CHECK(kv_layer.dim() == 5 && kv_layer.is_contiguous(),
              "kv_layer must be a contiguous [P, 2, S, Hkv, D] tensor");
  TORCH_CHECK(q.size(2) % 8 == 0, "head_dim must be a multiple of 8");
  TORCH_CHECK(qo_indptr.scalar_type() == torch::kInt32 && page_table.scalar_type() == torch::kInt32 &&
                  kv_lens.scalar_type() == torch::kInt32,
              "qo_indptr, page_table and kv_lens must be int32");
  auto qo = qo_indptr.contiguous();
  auto table = page_table.contiguous();
  auto lens = kv_lens.contiguous();
  const int64_t num_req = lens.size(0);
  const int64_t hq = q.size(1), dim = q.size(2);
  const int64_t page_size = kv_layer.size(2), hkv = kv_layer.size(3);
  const int64_t pmax = table.dim() == 2 ? table.size(1) : 0;
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int32_t *qop = qo.data_ptr<int32_t>(), *tp = table.data_ptr<int32_t>(),
                *lp = lens.data_ptr<int32_t>();
  const float sc = static_cast<float>(scale);
  switch (kv_layer.scalar_type()) {
    case torch::kFloat32:
      attend_any(qp, kv_layer.data_ptr<float>(), qop, tp, lp, op, num_req, hq, hkv, dim, page_size, pmax, sc, max_pairs);
      break;
    case torch::kBFloat16:
      attend_any(qp, kv_layer.data_ptr<c10::BFloat16>(), qop, tp, lp, op, num_req, hq, hkv, dim, page_size, pmax, sc, max_pairs);
      break;
    case torch::kFloat16:
      attend_any(qp, kv_layer.data_ptr<c10::Half>(), qop, tp, lp, op, num_req, hq, hkv, dim, page_size, pmax, sc, max_pairs);
      break;
    default:
      TORCH_CHECK(false, "kv_layer must be float32, bfloat16 or float16");
  }
  return out;
}

// x [M, K] float32 -> (codes [M, K], scales float32 [M, 1]): per row s = 1e-30 + absmax/127 and
// code = round_half_even(x / s) + offset (int8 with offset 0, or uint8 with offset 128)
template <typename code_t>
std::vector<torch::Tensor> quantize_rows_as(torch::Tensor x, torch::ScalarType type, int offset) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [M, K]");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1);
  auto q = torch::empty({m, k}, x.options().dtype(type));
  auto s = torch::empty({m, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  code_t* qp = q.data_ptr<code_t>();
  float* sp = s.data_ptr<float>();
  typedef code_t v8c __attribute__((vector_size(8)));
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* row = xp + i * k;
      // max is exact and order-free: 8 lanes, then the tail, give the sequential result
      v8f amax8 = splat8(0.f);
      int64_t j = 0;
      for (; j + 8 <= k; j += 8) amax8 = max8(abs8(load8(row + j)), amax8);
      float amax = 0.f;
      for (int l = 0; l < 8; ++l) amax = std::max(amax, amax8[l]);
      for (; j < k; ++j) amax = std::max(amax, std::fabs(row[j]));
      const float scale = 1e-30f + amax * (1.0f / 127.0f);
      sp[i] = scale;
      code_t* out = qp + i * k;
      const v8f s8 = splat8(scale);
      for (j = 0; j + 8 <= k; j += 8) {  // |row / scale| <= 127: round_even8 is exact
        v8i c = __builtin_convertvector(round_even8(load8(row + j) / s8), v8i) + offset;
        v8c b = __builtin_convertvector(c, v8c);
        std::memcpy(out + j, &b, sizeof b);
      }
      for (; j < k; ++j)
        out[j] = static_cast<code_t>(static_cast<int>(std::nearbyint(row[j] / scale)) + offset);
    }
  });
  return {q, s};
}

std::vector<torch::Tensor> quantize_rows(torch::Tensor x) {
  return quantize_rows_as<int8_t>(x, torch::kInt8, 0);
}

// the same codes shifted by 128, for GEMMs that take unsigned activations (zero point 128)
std::vector<torch::Tensor> quantize_rows_u8(torch::Tensor x) {
  return quantize_rows_as<uint8_t>(x, torch::kUInt8, 128);
}

// y = (quantize_rows(x) @ w_q^T) * s_w * s_x (+ bias), rounded in that order: x [M, K] float32, w_q [N, K] int8,
// s_w [N] float32, bias [N] float32 or an empty tensor
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor w_q, torch::Tensor s_w, torch::Tensor bias) {
  auto qs = quantize_rows(x);
  auto acc = at::_int_mm(qs[0], w_q.t());  // int32 [M, N], exact
  const int64_t m = acc.size(0), n = acc.size(1);
  auto y = torch::empty({m, n}, x.options());
  const int32_t* ap = acc.data_ptr<int32_t>();
  const float* sx = qs[1].data_ptr<float>();
  const float* sw = s_w.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int32_t* a = ap + i * n;
      float* out = yp + i * n;
      const float r = sx[i];
      if (bp) {
        for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(a[j]) * sw[j] * r + bp[j];
      } else {
        for (int64_t j = 0; j < n; ++j) out[j] = static_cast<float>(a[j]) * sw[j] * r;
      }
    }
  });
  return y;
}

// y[i, :] *= s[i] (then += bias when given), in place: y [M, N] float32, s [M, 1]
void scale_rows_(torch::Tensor y, torch::Tensor s, torch::Tensor bias) {
  TORCH_CHECK(y.dim() == 2 && y.is_contiguous() && y.scalar_type() == torch::kFloat32,
              "y must be a contiguous float32 [M, N] tensor");
  const int64_t m = y.size(0), n = y.size(1);
  float* yp = y.data_ptr<float>();
  const float* sp = s.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* out = yp + i * n;
      const float r = sp[i];
      if (bp) {
        for (int64_t j = 0; j < n; ++j) out[j] = out[j] * r + bp[j];
      } else {
        for (int64_t j = 0; j < n; ++j) out[j] = out[j] * r;
      }
    }
  });
}

// --- element-wise layers of a decoder block, one pass each (float32, rows in parallel) ---

namespace {
// row += d * s[i] (each product rounded before the add, as scale_rows_ rounds it), or
// row += d when there is no row scale (s null)
inline void add_row(float* row, const float* d, const float* s, int64_t i, int64_t h) {
  if (s) {
    const float r = s[i];
    for (int64_t j = 0; j < h; ++j) row[j] = row[j] + d[j] * r;
  } else {
    for (int64_t j = 0; j < h; ++j) row[j] = row[j] + d[j];
  }
}

inline void norm_row(const float* x, const float* w, float* y, int64_t h, float eps) {
  // 8 partial sums of squares, then the tail: a fixed order for a given h, so a row's
  // result does not depend on its batch
  v8f acc = splat8(0.f);
  int64_t j0 = 0;
  for (; j0 + 8 <= h; j0 += 8) {
    const v8f v = load8(x + j0);
    acc += v * v;
  }
  float ss = hsum(acc);
  for (int64_t j = j0; j < h; ++j) ss += x[j] * x[j];
  const float inv = 1.0f / std::sqrt(ss / static_cast<float>(h) + eps);
  for (int64_t j = 0; j < h; ++j) y[j] = (x[j] * inv) * w[j];
}
void check_rows(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), name,
              " must be a contiguous float32 [T, H] tensor");
}
}  // namespace

// y = x / sqrt(mean(x^2) + eps) * w, per row: x [T, H], w [H]
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  check_rows(x, "x");
  auto y = torch::empty_like(x);
  const int64_t t = x.size(0), h = x.size(1);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, t, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) norm_row(xp + i * h, wp, yp + i * h, h, static_cast<float>(eps));
  });
  return y;
}

// x += delta * s (in place, the residual stream; s [T, 1], rounded per product as scale_rows_
// rounds it; an empty s means 1), then returns rms_norm(x, w)
torch::Tensor add_rms_norm_(torch::Tensor x, torch::Tensor delta, torch::Tensor s,
                            torch::Tensor w, double eps) {
  check_rows(x, "x");
  check_rows(delta, "delta");
  TORCH_CHECK(!s.numel() || (s.numel() == x.size(0) && s.is_contiguous()), "s must be [T, 1]");
  const float* sp = s.numel() ? s.data_ptr<float>() : nullptr;
  auto y = torch::empty_like(x);
  const int64_t t = x.size(0), h = x.size(1);
  float* xp = x.data_ptr<float>();
  const float *dp = delta.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, t, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* row = xp + i * h;
      add_row(row, dp + i * h, sp, i, h);
      norm_row(row, wp, yp + i * h, h, static_cast<float>(eps));
    }
  });
  return y;
}

// gate_up [T, 2I] -> silu(gate) * up [T, I]; with a row scale s [T, 1] (else an empty tensor)
// gate and up are first multiplied by their row's s, rounded as scale_rows_ rounds them
torch::Tensor silu_mul(torch::Tensor gate_up, torch::Tensor s) {
  check_rows(gate_up, "gate_up");
  const int64_t t = gate_up.size(0), i2 = gate_up.size(1), n = i2 / 2;
  TORCH_CHECK(!s.numel() || (s.numel() == t && s.is_contiguous()), "s must be [T, 1]");
  auto y = torch::empty({t, n}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>();
  const float* sp = s.numel() ? s.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, t, 4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* g = gp + i * i2;
      const float* u = g + n;
      float* out = yp + i * n;
      const float r = sp ? sp[i] : 1.0f;
      const v8f r8 = splat8(r);
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) {
        v8f gv = load8(g + j), uv = load8(u + j);
        if (sp) gv = gv * r8, uv = uv * r8;
        store8(out + j, (gv / (splat8(1.0f) + exp8(-gv))) * uv);
      }
      for (; j < n; ++j) {
        const float gj = sp ? g[j] * r : g[j], uj = sp ? u[j] * r : u[j];
        out[j] = (gj / (1.0f + exp1(-gj))) * uj;
      }
    }
  });
  return y;
}

// x += delta * s per row (in place; s [T, 1]), each product rounded before the add
void add_scaled_(torch::Tensor x, torch::Tensor delta, torch::Tensor s) {
  check_rows(x, "x");
  check_rows(delta, "delta");
  const int64_t t = x.size(0), h = x.size(1);
  TORCH_CHECK(delta.size(0) == t && delta.size(1) == h && s.numel() == t && s.is_contiguous(),
              "delta must match x and s must be [T, 1]");
  float* xp = x.data_ptr<float>();
  const float *dp = delta.data_ptr<float>(), *sp = s.data_ptr<float>();
  at::parallel_for(0, t, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) add_row(xp + i * h, dp + i * h, sp, i, h);
  });
}

// Rotate-half RoPE in place on the first `heads` heads of each row of qkv [T, *] (q then k):
// pairs i and i + D/2, x' = x * cos + rotate_half(x) * sin, with cos/sin [T, D]
void rope_(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads, int64_t dim) {
  check_rows(qkv, "qkv");
  TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.scalar_type() == torch::kFloat32,
              "cos and sin must be contiguous float32 [T, D]");
  const int64_t t = qkv.size(0), width = qkv.size(1), half = dim / 2;
  TORCH_CHECK(heads * dim <= width, "more heads than the row holds");
  float* xp = qkv.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  at::parallel_for(0, t, 8, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* c = cp + i * dim;
      const float* s = sp + i * dim;
      for (int64_t hd = 0; hd < heads; ++hd) {
        float* x = xp + i * width + hd * dim;
        for (int64_t j = 0; j < half; ++j) {
          const float a = x[j], bb = x[j + half];
          x[j] = a * c[j] + (-bb) * s[j];
          x[j + half] = bb * c[j + half] + a * s[j + half];
        }
      }
    }
  });
}
"""

# -ffp-contract=off: products and sums round exactly as torch's element-wise ops round them
_FLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]
_FUNCTIONS = [
    "paged_attention",
    "quantize_rows",
    "int8_linear",
    "quantize_rows_u8",
    "scale_rows_",
    "rms_norm",
    "add_rms_norm_",
    "silu_mul",
    "add_scaled_",
    "rope_",
]

_lock = threading.Lock()
_module: Any = None
_failed: str | None = None


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def module_name() -> str:
    """The extension's name: changes with the source, the flags, the CPU and torch."""
    key = "\n".join([_SOURCE, " ".join(_FLAGS), _cpu_flags(), torch.__version__])
    return "pie_cpu_kernels_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _ninja_on_path() -> None:
    """torch's builder runs `ninja` from PATH; the venv's own ninja may not be on it."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore[import-not-found]

        candidates.insert(0, ninja.BIN_DIR)
    except ImportError:
        pass
    for d in candidates:
        if os.path.exists(os.path.join(d, "ninja")):
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return


def is_built() -> bool:
    """Whether this machine already has the compiled extension (so loading it is quick)."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        name = module_name()
        return os.path.exists(os.path.join(_get_build_directory(name, False), name + ".so"))
    except Exception:  # noqa: BLE001 - a private helper of torch: unknown means "no"
        return False


def load(verbose: bool = False) -> Any:
    """Build (first time on this machine) or load the extension; raises if that fails."""
    global _module
    if _module is None:
        from torch.utils.cpp_extension import load_inline

        _ninja_on_path()
        _module = load_inline(
            name=module_name(),
            cpp_sources=_SOURCE,
            functions=_FUNCTIONS,
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    return _module


def available() -> bool:
    """Whether the kernel can run in this process (builds it on the first call)."""
    global _failed
    if _module is not None:
        return True
    if _failed is not None or os.environ.get("PIE_CPU_KERNELS", "1") == "0":
        return False
    with _lock:
        if _module is None and _failed is None:
            try:
                load()
            except Exception as exc:  # noqa: BLE001 - any build failure means: use torch's path
                _failed = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "the C++ CPU kernels could not be built (%s); attention and int8 layers run "
                    "on the slower torch paths. Install a C++ compiler and ninja, then run "
                    "`python -m pie.kernels.cpu_kernels` to build them.",
                    _failed.splitlines()[0][:300],
                )
    return _module is not None


def module() -> Any:
    """The loaded extension when it can run in this process (built on first use), else None."""
    return _module if available() else None


def paged_attention_cpu(
    q: torch.Tensor,
    kv_layer: torch.Tensor,
    qo_indptr: torch.Tensor,
    page_table: torch.Tensor,
    kv_lens: torch.Tensor,
    scale: float,
    max_pairs: int = KERNEL_MAX_PAIRS,
) -> torch.Tensor:
    """Causal paged attention for a ragged batch; returns [T, Hq, D] in q's dtype.

    Requests that `kernel_takes` rejects (more than one query row and more than `max_pairs`
    (query row, key) pairs) are skipped: their output rows are left uninitialized for the
    caller to fill.
    """
    out = load().paged_attention(
        q.float().contiguous(), kv_layer, qo_indptr, page_table, kv_lens, float(scale), max_pairs
    )
    return out if q.dtype == torch.float32 else out.to(q.dtype)


if __name__ == "__main__":  # build ahead of time: python -m pie.kernels.cpu_kernels
    load(verbose="-v" in sys.argv)
    print(f"built {module_name()}")
