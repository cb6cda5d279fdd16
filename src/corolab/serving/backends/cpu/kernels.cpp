// Fused CPU kernels for the int8 path (corolab.serving.backends.cpu.kernels builds and loads this file).
//
// Why C++. At one stream an int8 decode step of SmolLM2-135M spent about as long issuing some 3,000 small
// torch calls from Python as in its matmuls. Here a whole decode step's layers are one call (RESULTS.md).
//   * int8_linear: Int8Linear.forward bit for bit (quantize each row, integer matmul, dequantize), with the
//     residual add after it and, optionally, the RMSNorm before it. Given a 4-bit weight (uint8, packed by
//     quantize.Int4Linear), Int4Linear.forward instead (int4_linear): --quantize int4.
//   * attend_decode: rotary embedding, cache write and softmax attention for one decoding query per row,
//     over a float32 or float16 cache.
//   * decode_layers: every layer of a decode step through the two above, in LlamaForward's order.
//
// Why a reply stays the same alone or in any batch. Each row is computed on its own, integer sums are exact
// in any order, and every float sum here (RMSNorm, attention) adds in one fixed order (dot, lane_total)
// whatever the batch, the thread count or the vector width. -ffp-contract=off keeps the compiler from fusing
// a multiply and an add into one rounding, so the order written is the order computed.
//
// Against the Python path (torch's RMSNorm and SDPA sum in their own orders) results differ in the last bits,
// and int8 codes amplify that: logits 3-9 % apart, the same quality within noise (RESULTS.md). Prefill keeps
// torch's attention; only the RMSNorm there is this file's.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define COROLAB_X86 1
#endif

namespace {

// Sums in a fixed order: 16 lanes (element i adds into lane i % 16, in order), then a fixed tree over the
// lanes. The compiler vectorizes the lanes but may not reorder them (no -ffast-math), so a row's sum is the
// same for any batch, thread count or vector width: what makes a reply the same alone or in a crowd.
constexpr int kLanes = 16;

inline float lane_total(float* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int j = 0; j < width; ++j) lanes[j] += lanes[j + width];
  return lanes[0];
}

inline float dot(const float* a, const float* b, int64_t d) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += a[i + j] * b[i + j];
  for (int j = 0; i + j < d; ++j) lanes[j] += a[i + j] * b[i + j];
  return lane_total(lanes);
}

// RMSNorm of each row, as transformers' LlamaRMSNorm: x * (1 / sqrt(mean(x^2) + eps)) * weight.
void rms_norm_rows(const float* x, int64_t rows, int64_t k, const float* weight, float eps, float* out) {
  at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * k;
      const float inv = 1.0f / std::sqrt(dot(row, row, k) / static_cast<float>(k) + eps);
      float* y = out + r * k;
      for (int64_t i = 0; i < k; ++i) y[i] = (row[i] * inv) * weight[i];
    }
  });
}

#ifdef COROLAB_X86
bool has_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return yes;
}

// quantize_row with AVX512 (the compiler's own vectorization of the portable loop below narrows float to int8
// through a chain of packs; this narrows in one instruction). The same arithmetic: max |x|, one multiply,
// round to nearest even, convert; codes fit in int8, so the narrowing truncates nothing.
__attribute__((target("avx512f,avx512bw")))
float quantize_row_avx512(const float* __restrict row, int64_t k, int8_t* __restrict out) {
  __m512 peak = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) peak = _mm512_max_ps(peak, _mm512_abs_ps(_mm512_loadu_ps(row + i)));
  float m = _mm512_reduce_max_ps(peak);
  for (int64_t j = i; j < k; ++j) m = std::max(m, std::fabs(row[j]));
  m = m < 1e-12f ? 1e-12f : m;
  const float inv = (1.0f / m) * 127.0f;
  const __m512 scale = _mm512_set1_ps(inv);
  for (i = 0; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_loadu_ps(row + i), scale),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
  }
  for (; i < k; ++i) out[i] = static_cast<int8_t>(static_cast<int32_t>(std::rint(row[i] * inv)));
  return m;
}
#endif

// One row of x [R, K]: amax = max|x| clamped to 1e-12, codes = round(x * (1/amax * 127)) as int8.
// Python: amax = rows.abs().amax(-1, keepdim=True).clamp_(min=1e-12); q = (rows * (127.0 / amax)).round_()...
// (`127.0 / t` is `t.reciprocal() * 127.0` in torch: two roundings, kept here.)
// A function of its own with restrict pointers and values, not a lambda's captures: an int8 store
// may alias anything (char), so in the lambda the compiler reloaded k from memory after every store and
// could not vectorize (measured: 32 rows x 1536 took 55 us, now a few).
float quantize_row(const float* __restrict row, int64_t k, int8_t* __restrict out) {
  float m = 0.0f;
#pragma omp simd reduction(max : m)  // a maximum is exact in any order
  for (int64_t i = 0; i < k; ++i) m = std::max(m, std::fabs(row[i]));
  m = m < 1e-12f ? 1e-12f : m;
  const float inv = (1.0f / m) * 127.0f;
  // rint, not nearbyint: the same rounding (to nearest, ties to even), but rint is inlined and vectorized.
  for (int64_t i = 0; i < k; ++i) out[i] = static_cast<int8_t>(static_cast<int32_t>(std::rint(row[i] * inv)));
  return m;
}

void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* codes, float* amax) {
  at::parallel_for(0, rows, 8, [=](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
#ifdef COROLAB_X86
      if (has_vnni()) {
        amax[r] = quantize_row_avx512(x + r * k, k, codes + r * k);
        continue;
      }
#endif
      amax[r] = quantize_row(x + r * k, k, codes + r * k);
    }
  });
}

// One row's columns [from, to): y = float(acc) * (amax * scale) (+ bias), then residual + y when given.
void dequantize_span(const int32_t* __restrict a, float m, const float* __restrict scale,
                     const float* __restrict bias, const float* __restrict residual, int64_t from, int64_t to,
                     float* __restrict y) {
  if (bias == nullptr && residual == nullptr) {
    for (int64_t j = from; j < to; ++j) y[j] = static_cast<float>(a[j]) * (m * scale[j]);
  } else if (bias == nullptr) {
    for (int64_t j = from; j < to; ++j) y[j] = residual[j] + static_cast<float>(a[j]) * (m * scale[j]);
  } else {
    for (int64_t j = from; j < to; ++j) {
      const float v = static_cast<float>(a[j]) * (m * scale[j]) + bias[j];
      y[j] = residual != nullptr ? residual[j] + v : v;
    }
  }
}

void dequantize(const int32_t* acc, const float* amax, const float* scale, const float* bias,
                const float* residual, int64_t rows, int64_t n, float* out) {
  constexpr int64_t kBlock = 4096;  // columns per task: the LM head's 49,152 columns split over threads
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, rows * blocks, 4, [=](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / blocks;
      const int64_t from = (task % blocks) * kBlock;
      const int64_t to = from + kBlock < n ? from + kBlock : n;
      dequantize_span(acc + r * n, amax[r], scale, bias, residual != nullptr ? residual + r * n : nullptr, from,
                      to, out + r * n);
    }
  });
}

// int32 sums of a few int8 rows against every weight row: out[m, n] = sum_k a[m, k] * w[n, k].
//
// Why not torch._int_mm for these. On a CPU with AMX, oneDNN's int8 gemm lays the weight out into AMX tiles on
// every call; at one to a few rows that costs more than the matmul itself (measured on a 2-core Xeon with AMX:
// 1 x 576 x 1728 took 40 us with AMX and 11 us without; at 496 rows AMX is 1.4-3x faster, so prefill keeps it).
// Here each weight row is read once, for all rows of a, with AVX512-VNNI dot products. Integer sums are exact in
// any order, so the result is _int_mm's, bit for bit.
//
// VNNI multiplies unsigned by signed bytes, so a is shifted by 128 (a + 128 is in 1..255 for int8 codes in
// -127..127) and the shift is taken back with each weight row's sum: sum (a + 128) w = sum a w + 128 sum w.
#ifdef COROLAB_X86
constexpr int64_t kMaxSmallRows = 4;  // rows x 4 columns of accumulators: 16 of the 32 vector registers

// Four int32 vectors to their four sums, in one vector: [sum a, sum b, sum c, sum d].
__attribute__((target("avx512f,avx512bw,avx512vnni")))
inline __m128i sum4(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  const __m512i all = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(all), _mm512_extracti64x4_epi64(all, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

// Weight rows [begin, end) against every row of the shifted activations, four weight rows at a time (four
// independent chains of dot products). A separate function: a lambda does not inherit the target attribute.
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void small_int_mm_cols(const uint8_t* shifted, int64_t m, int64_t k, const int8_t* w, const int32_t* wsum,
                       int64_t n, int64_t begin, int64_t end, int32_t* out) {
  const int64_t full = k / 64 * 64;
  const __mmask64 tail = k == full ? 0 : (~0ULL >> (64 - (k - full)));
  int64_t col = begin;
  for (; col + 4 <= end; col += 4) {
    const int8_t* rows[4] = {w + col * k, w + (col + 1) * k, w + (col + 2) * k, w + (col + 3) * k};
    __m512i acc[kMaxSmallRows][4];
    for (int64_t r = 0; r < m; ++r)
      for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_setzero_si512();
    for (int64_t i = 0; i < k; i += 64) {
      const __mmask64 keep = i < full ? ~0ULL : tail;
      __m512i wv[4];
      for (int c = 0; c < 4; ++c) wv[c] = _mm512_maskz_loadu_epi8(keep, rows[c] + i);
      for (int64_t r = 0; r < m; ++r) {
        const __m512i av = _mm512_maskz_loadu_epi8(keep, shifted + r * k + i);
        for (int c = 0; c < 4; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
      }
    }
    const __m128i bias = _mm_mullo_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wsum + col)),
                                         _mm_set1_epi32(128));
    for (int64_t r = 0; r < m; ++r) {
      const __m128i sums = _mm_sub_epi32(sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]), bias);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * n + col), sums);
    }
  }
  for (; col < end; ++col) {  // the last few weight rows, one at a time
    const int8_t* row = w + col * k;
    for (int64_t r = 0; r < m; ++r) {
      __m512i acc = _mm512_setzero_si512();
      for (int64_t i = 0; i < k; i += 64) {
        const __mmask64 keep = i < full ? ~0ULL : tail;
        acc = _mm512_dpbusd_epi32(acc, _mm512_maskz_loadu_epi8(keep, shifted + r * k + i),
                                  _mm512_maskz_loadu_epi8(keep, row + i));
      }
      out[r * n + col] = _mm512_reduce_add_epi32(acc) - 128 * wsum[col];
    }
  }
}

std::vector<uint8_t> shift(const int8_t* a, int64_t count) {
  std::vector<uint8_t> shifted(count);
  for (int64_t i = 0; i < count; ++i) shifted[i] = static_cast<uint8_t>(static_cast<int32_t>(a[i]) + 128);
  return shifted;
}

void small_int_mm_vnni(const int8_t* a, int64_t m, int64_t k, const int8_t* w, const int32_t* wsum, int64_t n,
                       int32_t* out) {
  const std::vector<uint8_t> shifted = shift(a, m * k);
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    small_int_mm_cols(shifted.data(), m, k, w, wsum, n, begin, end, out);
  });
}

// The same sums from a weight packed for VNNI (pack_int8): [n/16][k/4][16][4] bytes, so that one 64-byte load
// holds four consecutive k of sixteen outputs, which is what one vpdpbusd multiplies by four bytes of an
// activation row broadcast to every lane. A block of 16 outputs is then one contiguous strip of the weight,
// read front to back: one stream the prefetcher follows, no horizontal sums at the end.
//
// Why. On a Zen 4 without AMX (benchmarks/RESULTS.md, "A packed weight layout"), the whole int8_linear call on
// the model's layer shapes, one thread, against the plain weight (small_int_mm_vnni up to 4 rows, oneDNN's
// _int_mm above, which re-lays out the weight on every call): 1.4-1.5x at one row, 1.6-1.9x at 8, 1.1-1.3x at
// 32, 0.96-1.08x at 128, 0.92-1.03x at 512; the LM head 2.8x at one row. A decode step of the embedded model,
// two threads: 1.3x at one row, 1.7x at 8, 1.2x at 32, level from 64. Where the CPU has AMX, oneDNN's tiles
// win at many rows, so the plain layout stays there (corolab.serving.backends.cpu.kernels.packed_layout).
//
// R activation rows by C blocks of 16 outputs, R x C accumulators in registers for the whole k.
template <int R, int C>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
inline void packed_tile(const uint8_t* a, int64_t k, const int8_t* w, int64_t strip, const int32_t* wsum,
                        int32_t* out, int64_t n) {
  __m512i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t q = 0; q < k / 4; ++q) {
    __m512i wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_si512(w + c * strip + q * 64);
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, a + r * k + 4 * q, 4);
      const __m512i av = _mm512_set1_epi32(four);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], av, wv[c]);
    }
  }
  for (int c = 0; c < C; ++c) {  // take the shift back: 128 times each output's weight sum
    const __m512i bias = _mm512_slli_epi32(_mm512_loadu_si512(wsum + c * 16), 7);
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(out + r * n + c * 16, _mm512_sub_epi32(acc[r][c], bias));
  }
}

// Rows [0, m) against C blocks: eight rows at a time (with one block, 8 accumulators, one weight load per eight
// dot products), then the rest.
template <int C>
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void packed_rows(const uint8_t* a, int64_t m, int64_t k, const int8_t* w, int64_t strip, const int32_t* wsum,
                 int32_t* out, int64_t n) {
  int64_t r = 0;
  for (; r + 8 <= m; r += 8) packed_tile<8, C>(a + r * k, k, w, strip, wsum, out + r * n, n);
  a += r * k;
  out += r * n;
  switch (m - r) {
    case 7: packed_tile<7, C>(a, k, w, strip, wsum, out, n); break;
    case 6: packed_tile<6, C>(a, k, w, strip, wsum, out, n); break;
    case 5: packed_tile<5, C>(a, k, w, strip, wsum, out, n); break;
    case 4: packed_tile<4, C>(a, k, w, strip, wsum, out, n); break;
    case 3: packed_tile<3, C>(a, k, w, strip, wsum, out, n); break;
    case 2: packed_tile<2, C>(a, k, w, strip, wsum, out, n); break;
    case 1: packed_tile<1, C>(a, k, w, strip, wsum, out, n); break;
    default: break;
  }
}

// Blocks [begin, end) of 16 outputs. Up to four rows, four blocks at a time (4 x 4 accumulators: four weight
// streams share each broadcast); from five rows on, one block at a time (eight rows share each weight load:
// measured faster than 6 x 4 or 8 x 2 tiles on every layer shape of the model).
__attribute__((target("avx512f,avx512bw,avx512vnni")))
void packed_int_mm_blocks(const uint8_t* a, int64_t m, int64_t k, const int8_t* w, const int32_t* wsum, int64_t n,
                          int64_t begin, int64_t end, int32_t* out) {
  const int64_t strip = k * 16;
  int64_t b = begin;
  if (m <= 4)
    for (; b + 4 <= end; b += 4) packed_rows<4>(a, m, k, w + b * strip, strip, wsum + b * 16, out + b * 16, n);
  for (; b < end; ++b) packed_rows<1>(a, m, k, w + b * strip, strip, wsum + b * 16, out + b * 16, n);
}

// pack_int8 undone: the plain [n, k] weight, for oneDNN's gemm at many rows (a buffer for the call).
at::Tensor unpack_int8(const at::Tensor& packed) {
  const int64_t blocks = packed.size(0), quads = packed.size(1), k = quads * 4;
  auto plain = at::empty({blocks * 16, k}, packed.options());
  const int8_t* p = packed.const_data_ptr<int8_t>();
  int8_t* w = plain.mutable_data_ptr<int8_t>();
  at::parallel_for(0, blocks, 4, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j)
      for (int64_t c = 0; c < 16; ++c) {  // one plain row at a time, written front to back
        int8_t* row = w + (j * 16 + c) * k;
        const int8_t* from = p + (j * quads * 16 + c) * 4;
        for (int64_t q = 0; q < quads; ++q) std::memcpy(row + q * 4, from + q * 64, 4);
      }
  });
  return plain;
}

// Above this many rows (a prefill of a dozen prompts or more), oneDNN's gemm on the unpacked weight: there its
// blocking beats these tiles (at 4,096 rows 1.1-1.3x), and unpacking costs under 2 % of the call.
constexpr int64_t kPackedMaxRows = 512;

at::Tensor packed_int_mm(const at::Tensor& codes, const at::Tensor& packed, const at::Tensor& weight_sum) {
  TORCH_CHECK(packed.is_contiguous() && packed.size(1) * 4 == codes.size(1), "int8_linear: packed weight shape");
  if (codes.size(0) > kPackedMaxRows) return at::_int_mm(codes, unpack_int8(packed).t());
  TORCH_CHECK(has_vnni(), "int8_linear: a packed weight needs AVX512-VNNI");
  const int64_t m = codes.size(0), k = codes.size(1), blocks = packed.size(0), n = blocks * 16;
  TORCH_CHECK(weight_sum.scalar_type() == at::kInt && weight_sum.numel() == n,
              "int8_linear: int32 weight sums per output expected");
  auto out = at::empty({m, n}, codes.options().dtype(at::kInt));
  auto sums = weight_sum.contiguous();
  const std::vector<uint8_t> shifted = shift(codes.const_data_ptr<int8_t>(), m * k);
  const int8_t* w = packed.const_data_ptr<int8_t>();
  const int32_t* sp = sums.const_data_ptr<int32_t>();
  int32_t* op = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {  // 16 blocks: 256 outputs a task at least
    packed_int_mm_blocks(shifted.data(), m, k, w, sp, n, begin, end, op);
  });
  return out;
}

// W4A8: 4-bit weights in groups of kInt4Group inputs, each group of an output with its own float16 scale and
// offset (weight ~ code * scale + offset, code 0..15), against int8 activation codes. For --quantize int4
// (quantize.Int4Linear, which quantizes and packs in Python).
//
// Why. At one stream a decode step reads every weight once and waits on memory: the embedded model's int8
// weights are 134 MB a token. Four bits with a float16 scale and offset per 32 weights are 5 bits a weight.
//
// Layout, [n/16][k/32][320] bytes: for each block j of sixteen outputs and each group g, 256 bytes of codes, then
// the sixteen outputs' float16 scales (32 bytes) and offsets (32 bytes), so a block is one stream read front to
// back. Code byte (p, c, t), p = 0..3, holds the code of weight (16 j + c, 32 g + 8 p + t) in its low nibble and
// of weight (16 j + c, 32 g + 8 p + 4 + t) in its high one, so one 64-byte load gives two of the vectors VNNI
// multiplies (sixteen outputs by four inputs each). (Scales and offsets in tensors of their own made a third
// and a fourth stream: 1.3-1.45x int8's one-row layers instead of this layout's, RESULTS.md.) Codes are
// unsigned, VNNI's unsigned operand; the activation codes are the signed one. A group's share of an output is
//   sum a (code * scale + offset) = scale * (sum a code) + offset * (sum a),
// two integer sums, exact, and exact as floats too (|sum| < 2^24). A row's output adds each group's two products
// in group order, each rounded then added: the same for any batch, thread count or tile, and what
// Int4Linear.forward computes in torch. Each output is then times amax / 127, the row's activation scale.
constexpr int64_t kInt4Group = 32;
constexpr int64_t kInt4GroupBytes = kInt4Group * 16 / 2 + 2 * 16 * 2;  // codes, then scales and offsets: 320

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vnni,f16c")))
void int4_tile(const int8_t* a, const float* asum, int64_t k, const uint8_t* w, float* out, int64_t n) {
  const int64_t groups = k / kInt4Group;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = w + g * kInt4GroupBytes;
    __m512i wv[8];  // inputs 32 g + 4 i .. + 3 of the sixteen outputs, i = 0..7
    for (int p = 0; p < 4; ++p) {
      const __m512i v = _mm512_loadu_si512(group + p * 64);
      wv[2 * p] = _mm512_and_si512(v, low);
      wv[2 * p + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 256)));
    const __m512 o = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(group + 288)));
    for (int r = 0; r < R; ++r) {
      const int8_t* ar = a + r * k + g * kInt4Group;
      __m512i chain[4];  // four short chains of dot products, summed: integers, exact in any order
      for (int i = 0; i < 4; ++i) {
        int32_t four;
        std::memcpy(&four, ar + 4 * i, 4);
        chain[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], _mm512_set1_epi32(four));
      }
      for (int i = 4; i < 8; ++i) {
        int32_t four;
        std::memcpy(&four, ar + 4 * i, 4);
        chain[i - 4] = _mm512_dpbusd_epi32(chain[i - 4], wv[i], _mm512_set1_epi32(four));
      }
      const __m512 dot = _mm512_cvtepi32_ps(
          _mm512_add_epi32(_mm512_add_epi32(chain[0], chain[1]), _mm512_add_epi32(chain[2], chain[3])));
      acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(dot, s));
      acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(_mm512_set1_ps(asum[r * groups + g]), o));
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * n, acc[r]);
}

// Blocks [begin, end) of sixteen outputs for every row, eight rows at a time (a group's weights unpacked once
// for eight rows: eight vectors, eight float sums and a row's two integer ones fit the 32 registers).
__attribute__((target("avx512f,avx512bw,avx512vnni,f16c")))
void int4_blocks(const int8_t* a, const float* asum, int64_t m, int64_t k, const uint8_t* w, int64_t n,
                 int64_t begin, int64_t end, float* out) {
  const int64_t groups = k / kInt4Group, strip = groups * kInt4GroupBytes;  // one block's bytes
  for (int64_t b = begin; b < end; ++b) {
    const uint8_t* wb = w + b * strip;
    float* yb = out + b * 16;
    int64_t r = 0;
#define COROLAB_INT4_TILE(R) int4_tile<R>(a + r * k, asum + r * groups, k, wb, yb + r * n, n)
    for (; r + 8 <= m; r += 8) COROLAB_INT4_TILE(8);
    switch (m - r) {
      case 7: COROLAB_INT4_TILE(7); break;
      case 6: COROLAB_INT4_TILE(6); break;
      case 5: COROLAB_INT4_TILE(5); break;
      case 4: COROLAB_INT4_TILE(4); break;
      case 3: COROLAB_INT4_TILE(3); break;
      case 2: COROLAB_INT4_TILE(2); break;
      case 1: COROLAB_INT4_TILE(1); break;
      default: break;
    }
#undef COROLAB_INT4_TILE
  }
}

// Float sums [m, n]: for each row and output, over groups in order, scale * (sum a code) + offset * (sum a).
// int4_linear has checked the layout: [n/16, k/32, kInt4GroupBytes].
at::Tensor int4_mm(const at::Tensor& codes, const at::Tensor& packed) {
  TORCH_CHECK(has_vnni(), "int8_linear: a 4-bit weight needs AVX512-VNNI");
  const int64_t m = codes.size(0), k = codes.size(1), blocks = packed.size(0), n = blocks * 16;
  const int64_t groups = k / kInt4Group;
  const int8_t* a = codes.const_data_ptr<int8_t>();
  std::vector<float> asum(m * groups);  // each row's sum of codes per group, an integer, exact as a float
  for (int64_t r = 0; r < m; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int32_t total = 0;
      for (int64_t i = 0; i < kInt4Group; ++i) total += a[r * k + g * kInt4Group + i];
      asum[r * groups + g] = static_cast<float>(total);
    }
  auto out = at::empty({m, n}, codes.options().dtype(at::kFloat));
  const uint8_t* w = packed.const_data_ptr<uint8_t>();
  float* yp = out.mutable_data_ptr<float>();
  at::parallel_for(0, blocks, 16, [&](int64_t begin, int64_t end) {
    int4_blocks(a, asum.data(), m, k, w, n, begin, end, yp);
  });
  return out;
}

#endif

// An int8 [n, k] weight in the packed layout packed_int_mm reads: [n/16, k/4, 16, 4], with
// packed[j][q][c][t] = weight[16 j + c][4 q + t].
at::Tensor pack_int8(const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.dim() == 2, "pack_int8: int8 [out, in] weight expected");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n % 16 == 0 && k % 4 == 0, "pack_int8: outputs must be a multiple of 16 and inputs of 4, not ",
              n, " x ", k);
  return weight.contiguous().view({n / 16, 16, k / 4, 4}).permute({0, 2, 1, 3}).contiguous();
}

// The int8 matmul: a packed weight (pack_int8) through packed_int_mm at any row count; a plain one through
// small_int_mm_vnni for a few rows where the CPU has VNNI, otherwise torch._int_mm.
at::Tensor int_mm(const at::Tensor& codes, const at::Tensor& weight, const at::Tensor& weight_sum) {
#ifdef COROLAB_X86
  if (weight.dim() == 4) return packed_int_mm(codes, weight, weight_sum);  // pack_int8's layout, every row count
  constexpr int64_t kSmall = kMaxSmallRows;  // rows; above this oneDNN's gemm is as fast or faster (RESULTS.md)
  if (codes.size(0) <= kSmall && has_vnni() && weight.is_contiguous()) {
    TORCH_CHECK(weight_sum.scalar_type() == at::kInt && weight_sum.numel() == weight.size(0),
                "int8_linear: int32 weight sums per output expected");
    auto out = at::empty({codes.size(0), weight.size(0)}, codes.options().dtype(at::kInt));
    auto sums = weight_sum.contiguous();
    small_int_mm_vnni(codes.const_data_ptr<int8_t>(), codes.size(0), codes.size(1), weight.const_data_ptr<int8_t>(),
                      sums.const_data_ptr<int32_t>(), weight.size(0), out.mutable_data_ptr<int32_t>());
    return out;
  }
#endif
  return at::_int_mm(codes, weight.t());
}

// The RMSNorm (when given), then the int8 codes of x's rows and each row's amax: what both linears quantize.
std::tuple<at::Tensor, at::Tensor> quantized_rows(const at::Tensor& x, int64_t k, const std::optional<at::Tensor>& norm,
                                                  double eps) {
  auto rows = x.reshape({-1, k}).contiguous();
  const int64_t r = rows.size(0);
  if (norm.has_value() && norm->defined()) {  // the RMSNorm before q/k/v, gate/up and the LM head
    auto weight_f = norm->contiguous();
    TORCH_CHECK(weight_f.scalar_type() == at::kFloat && weight_f.numel() == k, "int8_linear: float32 norm weight");
    auto normed = at::empty({r, k}, x.options());
    rms_norm_rows(rows.const_data_ptr<float>(), r, k, weight_f.const_data_ptr<float>(), static_cast<float>(eps),
                  normed.mutable_data_ptr<float>());
    rows = normed;
  }
  auto codes = at::empty({r, k}, x.options().dtype(at::kChar));
  auto amax = at::empty({r}, x.options());
  quantize_rows(rows.const_data_ptr<float>(), r, k, codes.mutable_data_ptr<int8_t>(), amax.mutable_data_ptr<float>());
  return {codes, amax};
}

// The bias and the residual a linear layer's call was given, checked for its n outputs and r rows and made
// contiguous; undefined where not given. Both linears read them through data_or_null.
std::tuple<at::Tensor, at::Tensor> bias_and_residual(const std::optional<at::Tensor>& bias,
                                                     const std::optional<at::Tensor>& residual, int64_t n, int64_t r) {
  at::Tensor bias_f, residual_f;
  if (bias.has_value() && bias->defined()) {
    bias_f = bias->contiguous();
    TORCH_CHECK(bias_f.scalar_type() == at::kFloat && bias_f.numel() == n, "int8_linear: float32 bias per output");
  }
  if (residual.has_value() && residual->defined()) {
    residual_f = residual->reshape({-1, n}).contiguous();
    TORCH_CHECK(residual_f.scalar_type() == at::kFloat && residual_f.size(0) == r, "int8_linear: residual shape");
  }
  return {bias_f, residual_f};
}

inline const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

// out [rows, n] viewed with x's shape, its last dimension n.
at::Tensor like_input(const at::Tensor& out, const at::Tensor& x, int64_t n) {
  auto shape = x.sizes().vec();
  shape.back() = n;
  return out.view(shape);
}

// Int4Linear.forward: int8 codes of each row, the W4A8 sums (int4_mm), then each output times the row's
// amax * (1/127), plus the bias, and the residual plus that.
at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& norm, double eps) {
#ifdef COROLAB_X86
  TORCH_CHECK(weight.dim() == 3 && weight.size(2) == kInt4GroupBytes && weight.is_contiguous(),
              "int8_linear: 4-bit weight layout [out/16, in/", kInt4Group, ", ", kInt4GroupBytes, "] expected");
  const int64_t n = weight.size(0) * 16, k = weight.size(1) * kInt4Group;
  TORCH_CHECK(x.size(-1) == k, "int8_linear: input has ", x.size(-1), " features, the weight ", k);
  auto [codes, amax] = quantized_rows(x, k, norm, eps);
  const int64_t r = codes.size(0);
  auto out = int4_mm(codes, weight);
  auto [bias_f, residual_f] = bias_and_residual(bias, residual, n, r);
  const float* bp = data_or_null(bias_f);
  const float* rp = data_or_null(residual_f);
  float* y = out.mutable_data_ptr<float>();
  const float* am = amax.const_data_ptr<float>();
  constexpr float kInv127 = 1.0f / 127.0f;
  at::parallel_for(0, r, 8, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float m = am[row] * kInv127;
      float* yr = y + row * n;
      for (int64_t j = 0; j < n; ++j) {
        float v = yr[j] * m;
        if (bp != nullptr) v = v + bp[j];
        yr[j] = rp != nullptr ? rp[row * n + j] + v : v;
      }
    }
  });
  return like_input(out, x, n);
#else
  TORCH_CHECK(false, "int8_linear: 4-bit weights need an x86 CPU with AVX512-VNNI");
#endif
}

// One W8A8 linear layer: Int8Linear.forward, bit for bit; with `norm`, the RMSNorm before it (rms_norm_rows);
// with `residual`, the residual add after it (o_proj, down_proj).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                       const at::Tensor& weight_sum, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, const std::optional<at::Tensor>& norm, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "int8_linear: float32 input expected");
  if (weight.scalar_type() == at::kByte)  // quantize.Int4Linear: scales and offsets are inside the weight
    return int4_linear(x, weight, bias, residual, norm, eps);
  const bool packed = weight.dim() == 4;  // pack_int8's layout: [out/16, in/4, 16, 4]
  TORCH_CHECK(weight.scalar_type() == at::kChar && (weight.dim() == 2 || packed),
              "int8_linear: int8 [out, in] weight (or pack_int8's) expected");
  const int64_t n = packed ? weight.size(0) * 16 : weight.size(0);
  const int64_t k = packed ? weight.size(1) * 4 : weight.size(1);
  TORCH_CHECK(x.size(-1) == k, "int8_linear: input has ", x.size(-1), " features, the weight ", k);
  auto [codes, amax] = quantized_rows(x, k, norm, eps);
  const int64_t r = codes.size(0);
  auto acc = int_mm(codes, weight, weight_sum);
  auto scale_f = scale.contiguous();
  TORCH_CHECK(scale_f.scalar_type() == at::kFloat && scale_f.numel() == n, "int8_linear: float32 scale per output");
  auto [bias_f, residual_f] = bias_and_residual(bias, residual, n, r);
  auto out = at::empty({r, n}, x.options());
  dequantize(acc.const_data_ptr<int32_t>(), amax.const_data_ptr<float>(), scale_f.const_data_ptr<float>(),
             data_or_null(bias_f), data_or_null(residual_f), r, n, out.mutable_data_ptr<float>());
  return like_input(out, x, n);
}

// Rotary embedding of one head vector: x * cos + cat(-x[half:], x[:half]) * sin, as LlamaForward._rotate.
inline void rotate(const float* x, const float* cos, const float* sin, int64_t d, float* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < d; ++i) {
    const float other = i < half ? -x[i + half] : x[i - half];
    out[i] = x[i] * cos[i] + other * sin[i];
  }
}

#ifdef COROLAB_X86
// Eight scores at once, each exactly dot(q, key) * scale: the same 16 lanes (lanes 0-7 in `lo`, 8-15 in `hi`)
// summed over the same chunks in the same order, then the same tree over the lanes. Only the tree is done
// differently: dot reduces each key's lanes inside one vector (a shuffle and an add per level, key after key);
// here eight keys' lanes are transposed so that each level of the tree is one add for all eight. Measured in
// RESULTS.md ("attention kernel"); tests/test_kernels.py checks it against dot bit for bit.
template <int C>  // C = d / 16 chunks of 16 lanes
__attribute__((target("avx2")))
void scores8_avx2(const float* q, const float* k, int64_t kstride, float scale, float* out) {
  __m256 u[8];
  for (int key = 0; key < 8; ++key) {
    const float* kp = k + key * kstride;
    __m256 lo = _mm256_setzero_ps();
    __m256 hi = _mm256_setzero_ps();
    for (int c = 0; c < C; ++c) {
      lo = _mm256_add_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(q + 16 * c), _mm256_loadu_ps(kp + 16 * c)));
      hi = _mm256_add_ps(hi, _mm256_mul_ps(_mm256_loadu_ps(q + 16 * c + 8), _mm256_loadu_ps(kp + 16 * c + 8)));
    }
    u[key] = _mm256_add_ps(lo, hi);  // tree level 8: lanes[j] += lanes[j + 8]
  }
  // Transpose: t[j] holds lane j of the eight keys.
  const __m256 a0 = _mm256_unpacklo_ps(u[0], u[1]), a1 = _mm256_unpackhi_ps(u[0], u[1]);
  const __m256 a2 = _mm256_unpacklo_ps(u[2], u[3]), a3 = _mm256_unpackhi_ps(u[2], u[3]);
  const __m256 a4 = _mm256_unpacklo_ps(u[4], u[5]), a5 = _mm256_unpackhi_ps(u[4], u[5]);
  const __m256 a6 = _mm256_unpacklo_ps(u[6], u[7]), a7 = _mm256_unpackhi_ps(u[6], u[7]);
  const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
  const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
  const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
  const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
  const __m256 t0 = _mm256_permute2f128_ps(b0, b4, 0x20), t1 = _mm256_permute2f128_ps(b1, b5, 0x20);
  const __m256 t2 = _mm256_permute2f128_ps(b2, b6, 0x20), t3 = _mm256_permute2f128_ps(b3, b7, 0x20);
  const __m256 t4 = _mm256_permute2f128_ps(b0, b4, 0x31), t5 = _mm256_permute2f128_ps(b1, b5, 0x31);
  const __m256 t6 = _mm256_permute2f128_ps(b2, b6, 0x31), t7 = _mm256_permute2f128_ps(b3, b7, 0x31);
  const __m256 p0 = _mm256_add_ps(t0, t4), p1 = _mm256_add_ps(t1, t5);  // level 4
  const __m256 p2 = _mm256_add_ps(t2, t6), p3 = _mm256_add_ps(t3, t7);
  const __m256 q0 = _mm256_add_ps(p0, p2), q1 = _mm256_add_ps(p1, p3);  // level 2
  _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_add_ps(q0, q1), _mm256_set1_ps(scale)));  // level 1, then * scale
}

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

// The scores of one query against n keys: dot(q, key) * scale each.
void scores(const float* q, const float* k, int64_t kstride, int64_t n, int64_t d, float scale, float* out) {
  int64_t t = 0;
#ifdef COROLAB_X86
  if (has_avx2() && (d == 64 || d == 128)) {
    for (; t + 8 <= n; t += 8) {
      if (d == 64) scores8_avx2<4>(q, k + t * kstride, kstride, scale, out + t);
      else scores8_avx2<8>(q, k + t * kstride, kstride, scale, out + t);
    }
  }
#endif
  for (; t < n; ++t) out[t] = dot(q, k + t * kstride, d) * scale;
}

// acc = sum over t of weights[t] * v[t], adding t in order; D known here so the sums stay in registers
// (the generic loop kept them in memory: a load and a store per value per key).
template <int D>
void weigh_values(const float* weights, const float* v, int64_t vstride, int64_t n, float* acc) {
  float a[D] = {};
  for (int64_t t = 0; t < n; ++t) {
    const float w = weights[t];
    const float* value = v + t * vstride;
    for (int i = 0; i < D; ++i) a[i] += w * value[i];
  }
  for (int i = 0; i < D; ++i) acc[i] = a[i];
}

void weigh_values(const float* weights, const float* v, int64_t vstride, int64_t n, int64_t d, float* acc) {
  if (d == 64) return weigh_values<64>(weights, v, vstride, n, acc);
  if (d == 128) return weigh_values<128>(weights, v, vstride, n, acc);
  std::fill(acc, acc + d, 0.0f);
  for (int64_t t = 0; t < n; ++t) {
    const float w = weights[t];
    const float* value = v + t * vstride;
    for (int64_t i = 0; i < d; ++i) acc[i] += w * value[i];
  }
}

// exp(x) for the softmax's x = score - max <= 0, the same numbers from the scalar and the vector code: the
// same operations in the same order (-ffp-contract=off), x clamped at -87 so that 2^n stays a normal float
// (exp(-87) is 1.6e-38; a weight that small changes no sum it joins). n = round(x / ln 2), r = x - n ln 2 in
// two steps (ln 2's leading bits exactly, then the rest), exp(r) by a degree-7 polynomial on |r| <= ln 2 / 2
// (relative error about 1e-7), times 2^n built from its bits. Why not std::exp: it is one call per key, which
// the vector code cannot batch; with the AVX512 group kernel below, this exp and the lane-wise total took a
// layer's decode attention from 1.2x to 1.6x the previous kernel's speed (benchmarks/bench_attention.py, caches
// warm; RESULTS.md). The softmax's numbers move by about 1e-7: still the same alone or in any batch.
constexpr float kExpLow = -87.0f, kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kExpP0 = 1.9875691500e-4f, kExpP1 = 1.3981999507e-3f, kExpP2 = 8.3334519073e-3f,
                kExpP3 = 4.1665795894e-2f, kExpP4 = 1.6666665459e-1f, kExpP5 = 5.0000001201e-1f;

inline float softmax_exp(float x) {
  x = x < kExpLow ? kExpLow : x;
  const float n = std::nearbyint(x * kLog2e);
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = kExpP0;
  p = p * r + kExpP1;
  p = p * r + kExpP2;
  p = p * r + kExpP3;
  p = p * r + kExpP4;
  p = p * r + kExpP5;
  const float y = (p * (r * r) + r) + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return y * two_n;
}

// Softmax attention of one query over n keys: the scores, their maximum, exp(score - max) and the weighted
// sum of the values, each in one fixed order (see dot). Not torch's SDPA: one call per (row, head) costs it
// more in setting up than the arithmetic here, and its kernel splits the keys differently with the thread
// count (RESULTS.md), so the same row could round differently from one step to the next.
void attend_one(const float* q, const float* k, int64_t kstride, const float* v, int64_t vstride, int64_t n,
                int64_t d, float scale, std::vector<float>& weights, float* out) {
  weights.resize(n);
  scores(q, k, kstride, n, d, scale, weights.data());
  float top = -INFINITY;
  for (int64_t t = 0; t < n; ++t) top = weights[t] > top ? weights[t] : top;
  float lanes[kLanes] = {};
  for (int64_t t = 0; t < n; ++t) {
    weights[t] = softmax_exp(weights[t] - top);
    lanes[t % kLanes] += weights[t];
  }
  const float total = lane_total(lanes);
  float acc[256];
  weigh_values(weights.data(), v, vstride, n, d, acc);
  const float inv = 1.0f / total;
  for (int64_t i = 0; i < d; ++i) out[i] = acc[i] * inv;
}

#ifdef COROLAB_X86
bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// softmax_exp on sixteen lanes: the same operations.
__attribute__((target("avx512f")))
inline __m512 softmax_exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpLow));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Hi)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Lo)));
  __m512 p = _mm512_set1_ps(kExpP0);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpP1));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpP2));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpP3));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpP4));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kExpP5));
  const __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(bits));
}

// Sixteen scores at once, each exactly dot(q, key) * scale: every key's 16 lanes summed over the same chunks in
// the same order, then the same tree over the lanes (j + 8, j + 4, j + 2, j + 1), done for all sixteen keys
// with one add per vector and level. Keys past `count` score 0 and are not read.
template <int C>  // C = d / 16 chunks of 16 lanes
__attribute__((target("avx512f")))
__m512 scores16_avx512(const __m512* q, const float* k, int64_t kstride, int count, float scale) {
  __m512 u[16];
  for (int key = 0; key < 16; ++key) {
    __m512 lanes = _mm512_setzero_ps();
    if (key < count) {
      const float* kp = k + key * kstride;
      for (int c = 0; c < C; ++c) lanes = _mm512_add_ps(lanes, _mm512_mul_ps(q[c], _mm512_loadu_ps(kp + 16 * c)));
    }
    u[key] = lanes;
  }
  __m512 v[8], w[4], s[2];
  for (int i = 0; i < 8; ++i)  // level 8: [key 2i lanes 0-7 | key 2i+1 lanes 0-7]
    v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // level 4: four keys, lanes 0-3 each
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // level 2: in 128-bit block b, keys 8i+b and 8i+4+b, lanes 0-1 each
    s[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
  // level 1: position 4b + e holds key 4e + b; the permutation puts key t at position t.
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(s[0], s[1], 0x88), _mm512_shuffle_ps(s[0], s[1], 0xDD));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_mul_ps(_mm512_permutexvar_ps(order, r), _mm512_set1_ps(scale));
}

// acc[h] = sum over t of weights[h][t] * v[t] for H query heads that share these values, t in order for every
// element, as weigh_values; the heads' independent sums keep the adders busy while each waits on its last add.
template <int C, int H>
__attribute__((target("avx512f")))
void weigh_values_heads(const float* const* weights, const float* v, int64_t vstride, int64_t n, float* const* out) {
  __m512 acc[H][C];
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) acc[h][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    const float* value = v + t * vstride;
    __m512 chunk[C];
    for (int c = 0; c < C; ++c) chunk[c] = _mm512_loadu_ps(value + 16 * c);
    for (int h = 0; h < H; ++h) {
      const __m512 w = _mm512_set1_ps(weights[h][t]);
      for (int c = 0; c < C; ++c) acc[h][c] = _mm512_add_ps(acc[h][c], _mm512_mul_ps(w, chunk[c]));
    }
  }
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out[h] + 16 * c, acc[h][c]);
}

// Up to four heads at a time for a head size of 64 (16 accumulators, 4 value chunks), two for 128.
template <int C>
__attribute__((target("avx512f")))
void weigh_values_group(const float* const* weights, const float* v, int64_t vstride, int64_t n, int64_t heads,
                        float* const* out) {
  int64_t h = 0;
  if constexpr (C <= 4) {
    for (; h + 4 <= heads; h += 4) weigh_values_heads<C, 4>(weights + h, v, vstride, n, out + h);
    if (heads - h == 3) return weigh_values_heads<C, 3>(weights + h, v, vstride, n, out + h);
  }
  for (; h + 2 <= heads; h += 2) weigh_values_heads<C, 2>(weights + h, v, vstride, n, out + h);
  if (h < heads) weigh_values_heads<C, 1>(weights + h, v, vstride, n, out + h);
}

// The query heads of one key/value group over the group's n keys, with AVX512 (head size 64 or 128): each
// head's numbers are attend_one's, bit for bit (the same scores, exp, total and weighted sum, in the same
// orders; tests/test_kernels.py), but sixteen scores come from one tree, sixteen exps from one vector, and the
// weighted sums of the group's heads run side by side over values loaded once for the group.
template <int C>
__attribute__((target("avx512f")))
void attend_group_avx512(const float* q, int64_t heads, const float* k, int64_t kstride, const float* v,
                         int64_t vstride, int64_t n, float scale, std::vector<float>& weights, float* out,
                         int64_t out_stride) {
  constexpr int64_t d = 16 * C;
  weights.resize(heads * n);
  const float* rows[16];
  float* outs[16];
  float acc[16][d];
  float inv[16];
  for (int64_t h = 0; h < heads; ++h) {
    __m512 qc[C];
    for (int c = 0; c < C; ++c) qc[c] = _mm512_loadu_ps(q + h * d + 16 * c);
    float* wh = weights.data() + h * n;
    for (int64_t t = 0; t < n; t += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, n - t));
      _mm512_mask_storeu_ps(wh + t, static_cast<__mmask16>((1u << count) - 1),
                            scores16_avx512<C>(qc, k + t * kstride, kstride, count, scale));
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < n; ++t) top = wh[t] > top ? wh[t] : top;
    const __m512 topv = _mm512_set1_ps(top);
    __m512 lanes = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
      const __mmask16 live = static_cast<__mmask16>((1u << std::min<int64_t>(16, n - t)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(live, softmax_exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, wh + t), topv)));
      _mm512_mask_storeu_ps(wh + t, live, e);
      lanes = _mm512_add_ps(lanes, e);
    }
    float lane_values[kLanes];
    _mm512_storeu_ps(lane_values, lanes);
    const float total = lane_total(lane_values);
    rows[h] = wh;
    outs[h] = acc[h];
    inv[h] = 1.0f / total;
  }
  weigh_values_group<C>(rows, v, vstride, n, heads, outs);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < d; ++i) out[h * out_stride + i] = acc[h][i] * inv[h];
}
#endif

// A float16 cache (--kv-cache-dtype float16): what a row's keys or values hold, as float32 (exact: every float16
// is a float32). One (row, group)'s n columns go into a scratch buffer that stays in the core's cache for the
// attention after it. Half the cache's memory; a decode step of the embedded model at 32-128 rows was only
// 1-6 % faster for it (benchmarks/bench_kv_dtype.py), since the step is mostly int8 matmuls.
void widen(const at::Half* from, int64_t stride, int64_t n, int64_t d, float* to) {
  for (int64_t t = 0; t < n; ++t) {
    const at::Half* row = from + t * stride;
    float* out = to + t * d;
    int64_t i = 0;
#if defined(COROLAB_X86) && defined(__F16C__)
    for (; i + 8 <= d; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i))));
#endif
    for (; i < d; ++i) out[i] = static_cast<float>(row[i]);
  }
}

// float32 to float16, rounding to nearest even, as torch's .to(torch.float16) (the prefill path's rounding).
void narrow(const float* from, int64_t d, at::Half* to) {
  int64_t i = 0;
#if defined(COROLAB_X86) && defined(__F16C__)
  for (; i + 8 <= d; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(to + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(from + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < d; ++i) to[i] = at::Half(from[i]);
}

// The query heads of one group over its n keys: the AVX512 group kernel where it applies, else attend_one
// head by head. The same numbers either way.
void attend_group(const float* q, int64_t heads, const float* k, int64_t kstride, const float* v, int64_t vstride,
                  int64_t n, int64_t d, float scale, std::vector<float>& weights, float* out) {
#ifdef COROLAB_X86
  if (has_avx512() && heads <= 16) {
    if (d == 64) return attend_group_avx512<4>(q, heads, k, kstride, v, vstride, n, scale, weights, out, d);
    if (d == 128) return attend_group_avx512<8>(q, heads, k, kstride, v, vstride, n, scale, weights, out, d);
  }
#endif
  for (int64_t h = 0; h < heads; ++h) attend_one(q + h * d, k, kstride, v, vstride, n, d, scale, weights, out + h * d);
}

// One decode step's attention for a layer: rotate q and k, write k and v into the cache buffers at column
// `start`, attend, and return the heads side by side [B, H * D] (o_proj's input).
// qkv: [B, (H + 2G) * D], the fused projection's output. cos, sin: [B, D]. keys, values: [B, G, C, D] buffers
// with C > start, float32 or float16 (written rounded, read widened). Each row attends over its own last
// lengths[b] keys (close_holes keeps a row's real keys at the right end), never over another row's padding, as
// LlamaForward._attend does in Python.
at::Tensor attend_decode(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, at::Tensor keys,
                         at::Tensor values, int64_t start, const at::Tensor& lengths, int64_t heads,
                         int64_t kv_heads) {
  const bool half = keys.scalar_type() == at::kHalf;
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && (half || keys.scalar_type() == at::kFloat),
              "attend_decode: float32 activations and a float32 or float16 cache expected");
  TORCH_CHECK(values.scalar_type() == keys.scalar_type(), "attend_decode: keys and values of one type expected");
  const int64_t b = keys.size(0);
  const int64_t d = keys.size(3);
  TORCH_CHECK(keys.size(1) == kv_heads && values.sizes() == keys.sizes(), "attend_decode: cache shape");
  TORCH_CHECK(start >= 0 && start < keys.size(2), "attend_decode: no room in the cache at column ", start);
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1, "attend_decode: cache rows must be contiguous");
  TORCH_CHECK(kv_heads >= 1 && heads % kv_heads == 0, "attend_decode: heads must be a multiple of kv_heads");
  auto qkv_c = qkv.reshape({b, (heads + 2 * kv_heads) * d}).contiguous();
  auto cos_c = cos.reshape({b, d}).contiguous();
  auto sin_c = sin.reshape({b, d}).contiguous();
  auto q = at::empty({b, heads, 1, d}, qkv.options());
  const float* src = qkv_c.const_data_ptr<float>();
  const float* cp = cos_c.const_data_ptr<float>();
  const float* sp = sin_c.const_data_ptr<float>();
  float* qp = q.mutable_data_ptr<float>();
  char* kp = static_cast<char*>(keys.mutable_data_ptr());
  char* vp = static_cast<char*>(values.mutable_data_ptr());
  const int64_t item = keys.element_size();
  const int64_t filled = start + 1;
  auto lengths_c = lengths.to(at::kLong).contiguous();
  TORCH_CHECK(lengths_c.numel() == b, "attend_decode: one length per row expected");
  const int64_t* lp = lengths_c.const_data_ptr<int64_t>();
  for (int64_t row = 0; row < b; ++row) {
    TORCH_CHECK(lp[row] >= 1 && lp[row] <= filled, "attend_decode: row ", row, " has ", lp[row], " keys of ", filled);
  }
  TORCH_CHECK(d <= 256, "attend_decode: head size up to 256");
  // Where (row, group)'s column t begins, in bytes from the buffer's start.
  const auto at_column = [&](const at::Tensor& cache, int64_t row, int64_t g, int64_t t) {
    return (row * cache.stride(0) + g * cache.stride(1) + t * cache.stride(2)) * item;
  };
  // Checked above, written below: a refused call leaves the cache as it was.
  const int64_t width = (heads + 2 * kv_heads) * d;
  float rotated[256];
  for (int64_t row = 0; row < b; ++row) {
    const float* in = src + row * width;
    for (int64_t h = 0; h < heads; ++h) {
      rotate(in + h * d, cp + row * d, sp + row * d, d, qp + (row * heads + h) * d);
    }
    for (int64_t g = 0; g < kv_heads; ++g) {
      rotate(in + (heads + g) * d, cp + row * d, sp + row * d, d, rotated);
      const float* vin = in + (heads + kv_heads + g) * d;
      char* kdst = kp + at_column(keys, row, g, start);
      char* vdst = vp + at_column(values, row, g, start);
      if (half) {
        narrow(rotated, d, reinterpret_cast<at::Half*>(kdst));
        narrow(vin, d, reinterpret_cast<at::Half*>(vdst));
      } else {
        std::memcpy(kdst, rotated, d * sizeof(float));
        std::memcpy(vdst, vin, d * sizeof(float));
      }
    }
  }
  auto out = at::empty({b, heads * d}, qkv.options());
  float* op = out.mutable_data_ptr<float>();
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  // One (row, key/value group) per task, computed start to end by one thread: the same numbers for any thread
  // count.
  at::parallel_for(0, b * kv_heads, 2, [&](int64_t begin, int64_t end) {
    std::vector<float> weights, kwide, vwide;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / kv_heads;
      const int64_t g = task % kv_heads;
      const int64_t n = lp[row];
      const char* kbase = kp + at_column(keys, row, g, filled - n);
      const char* vbase = vp + at_column(values, row, g, filled - n);
      const float* qg = qp + (row * heads + g * group) * d;
      float* og = op + row * heads * d + g * group * d;
      if (half) {
        kwide.resize(n * d);
        vwide.resize(n * d);
        widen(reinterpret_cast<const at::Half*>(kbase), keys.stride(2), n, d, kwide.data());
        widen(reinterpret_cast<const at::Half*>(vbase), values.stride(2), n, d, vwide.data());
        attend_group(qg, group, kwide.data(), d, vwide.data(), d, n, d, scale, weights, og);
      } else {
        attend_group(qg, group, reinterpret_cast<const float*>(kbase), keys.stride(2),
                     reinterpret_cast<const float*>(vbase), values.stride(2), n, d, scale, weights, og);
      }
    }
  });
  return out;
}

// Weights per layer that decode_layers reads, in this order (a 4-bit layer has empty scales and sums: its own
// are inside its weight).
enum LayerWeight { kInputNorm, kQkv, kQkvScale, kQkvSum, kO, kOScale, kOSum, kPostNorm, kGateUp, kGateUpScale,
                   kGateUpSum, kDown, kDownScale, kDownSum, kPerLayer };

// A decode step through every layer in one call: for each layer, what LlamaForward's loop does with the
// kernels (norm and q/k/v, attend_decode, o_proj plus the residual, norm and gate/up, SiLU(gate) * up,
// down_proj plus the residual), with the same functions in the same order, so the numbers are the loop's.
// Why: at one row the loop's Python (some ten calls per layer, each a few microseconds through the
// dispatcher) was about a quarter of the step (benchmarks/profile_step.py, RESULTS.md).
// weights: kPerLayer tensors per layer; keys, values: each layer's cache buffers, with room at column start.
at::Tensor decode_layers(const at::Tensor& hidden, const at::Tensor& cos, const at::Tensor& sin, at::TensorList weights,
                         at::TensorList keys, at::TensorList values, int64_t start, const at::Tensor& lengths,
                         int64_t heads, int64_t kv_heads, int64_t intermediate, double eps) {
  const auto layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(static_cast<int64_t>(values.size()) == layers &&
              static_cast<int64_t>(weights.size()) == layers * kPerLayer,
              "decode_layers: ", kPerLayer, " weights and one key and value buffer per layer expected");
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(1) == 1, "decode_layers: hidden states [B, 1, H] expected");
  const int64_t b = hidden.size(0);
  at::Tensor h = hidden;
  for (int64_t i = 0; i < layers; ++i) {
    const at::Tensor* w = &weights[i * kPerLayer];
    auto qkv = int8_linear(h, w[kQkv], w[kQkvScale], w[kQkvSum], std::nullopt, std::nullopt, w[kInputNorm], eps);
    at::Tensor out;
    {  // a profiler's scope: torch.profiler sees attention apart from the int8 layers (benchmarks/profile_step.py)
      RECORD_FUNCTION("corolab::attend_decode", std::vector<c10::IValue>());
      out = attend_decode(qkv, cos, sin, keys[i], values[i], start, lengths, heads, kv_heads);
    }
    h = int8_linear(out.view({b, 1, -1}), w[kO], w[kOScale], w[kOSum], std::nullopt, h, std::nullopt, 0.0);
    auto parts = int8_linear(h, w[kGateUp], w[kGateUpScale], w[kGateUpSum], std::nullopt, std::nullopt,
                             w[kPostNorm], eps).split_with_sizes({intermediate, intermediate}, -1);
    h = int8_linear(at::silu(parts[0]) * parts[1], w[kDown], w[kDownScale], w[kDownSum], std::nullopt, h,
                    std::nullopt, 0.0);
  }
  return h;
}

}  // namespace

TORCH_LIBRARY(corolab, m) {
  m.def("pack_int8(Tensor weight) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor weight_sum, Tensor? bias=None, "
        "Tensor? residual=None, Tensor? norm=None, float eps=0.0) -> Tensor");
  m.def("attend_decode(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) keys, Tensor(b!) values, int start, "
        "Tensor lengths, int heads, int kv_heads) -> Tensor");
  m.def("decode_layers(Tensor hidden, Tensor cos, Tensor sin, Tensor[] weights, Tensor(a!)[] keys, "
        "Tensor(b!)[] values, int start, Tensor lengths, int heads, int kv_heads, int intermediate, float eps) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(corolab, CPU, m) {
  m.impl("pack_int8", &pack_int8);
  m.impl("int8_linear", &int8_linear);
  m.impl("attend_decode", &attend_decode);
  m.impl("decode_layers", &decode_layers);
}
