// AVX-512 (F, BW, VNNI) kernels. Arithmetic as defined in kernels_internal.h: integer dot products
// with vpdpbusd / vpdpwssd, then the canonical f32 steps, so results equal the scalar int8 family.
//
// Layout of the work: a "tile" is R weight rows x T tokens held in registers for the whole row
// (R*T f32 accumulators); each weight block is unpacked once per tile and each activation vector
// loaded once per row of the tile. Decoding (one token) streams DEC_R = 4 rows at a time and
// prefetches PF_TILES = 2 tiles ahead, since it is bound by memory bandwidth; batches walk row blocks
// that stay in L2 while every token passes over them, so the weights come from DRAM once.
#include "kernels_internal.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include <math.h>

// Clang's generic tuning splits vpdpwssd chains into vpmaddwd + vpaddd (twice the instructions);
// tuning for a VNNI core keeps them.
#if defined(__clang__)
#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c,avx2,bmi2,tune=znver4")))
#else
#define T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,f16c,avx2,bmi2")))
#endif
#define INL static inline __attribute__((always_inline)) T512
// The avx512-vbmi family: the same kernels, plus byte permutes (vpermi2b) where a type gains from them.
#if defined(__clang__)
#define T512V __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,fma,f16c,avx2,bmi2,tune=znver4")))
#else
#define T512V __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,fma,f16c,avx2,bmi2")))
#endif
#define INLV static inline __attribute__((always_inline)) T512V
// Tile loops have constant trip counts once inlined; they must unroll fully so tiles live in registers.
#if defined(__clang__)
#define UNROLL _Pragma("clang loop unroll(full)")
#else
#define UNROLL _Pragma("GCC unroll 16")
#endif

// ---- helpers --------------------------------------------------------------------------------

// Canonical reduce16 (kernels_internal.h): (i, i+8), (i, i+4), (i, i+2), (i, i+1).
INL float reduce16(__m512 v) {
    __m256 h8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

INL __m512i load_zext64(const uint8_t *p) { return _mm512_zextsi128_si512(_mm_loadl_epi64((const __m128i *)p)); }

// ---- activation quantization ------------------------------------------------------------------

// 16 floats -> the levels q1, q2 exactly as quantize_one in kernels_scalar.c (round half even,
// clamp; nan gives INT_MIN from the conversion and so the scalar code's clamped values), and
// X = 256 q1 + q2 for the sums.
INL void quantize16(__m512 x, __m512 id, __m512 id256, int levels, __m128i *q1, __m128i *q2, __m512i *X) {
    const __m512i c127 = _mm512_set1_epi32(127), c65536 = _mm512_set1_epi32(65536);
    __m512i a = _mm512_cvtps_epi32(_mm512_mul_ps(x, id));
    a = _mm512_min_epi32(_mm512_max_epi32(a, _mm512_sub_epi32(_mm512_setzero_si512(), c127)), c127);
    __m512i w = _mm512_cvtps_epi32(_mm512_mul_ps(x, id256));
    w = _mm512_min_epi32(_mm512_max_epi32(w, _mm512_sub_epi32(_mm512_setzero_si512(), c65536)), c65536);
    __m512i a256 = _mm512_slli_epi32(a, 8);
    __m512i r = _mm512_sub_epi32(w, a256);
    r = _mm512_min_epi32(_mm512_max_epi32(r, _mm512_sub_epi32(_mm512_setzero_si512(), c127)), c127);
    if (levels == 1) r = _mm512_setzero_si512();
    *q1 = _mm512_cvtepi32_epi8(a);
    *q2 = _mm512_cvtepi32_epi8(r);
    *X = _mm512_add_epi32(a256, r);
}

INL float amax16(__m512 a, float m) {
    float v = _mm512_reduce_max_ps(_mm512_abs_ps(a));
    return v > m ? v : m;
}

static T512 void quantize_avx512(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                                 int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        uint8_t *base = act + t * l->token_bytes;
        uint8_t *qs = base + l->qs_off;
        float *d = (float *)(base + l->d_off);
        if (l->format == ACT_Q8_32) {
            for (int64_t b = 0; b < l->n_groups * 4; b++) {
                int64_t g = b / 4, k = b % 4;
                uint8_t *lo = qs + g * 256 + 16 * k;
                __m128i a0 = _mm_setzero_si128(), a1 = a0, r0 = a0, r1 = a0;
                __m512i X0 = _mm512_setzero_si512(), X1 = X0;
                float db = 0;
                if (b < l->n_blocks) {
                    __m512 x0 = _mm512_loadu_ps(xt + 32 * b), x1 = _mm512_loadu_ps(xt + 32 * b + 16);
                    float amax = amax16(x1, amax16(x0, 0));
                    float id = amax > 0 ? 127.0f / amax : 0.0f;
                    db = amax / 127.0f / 256.0f;
                    __m512 vid = _mm512_set1_ps(id), vid256 = _mm512_set1_ps(id * 256.0f);
                    quantize16(x0, vid, vid256, l->levels, &a0, &r0, &X0);
                    quantize16(x1, vid, vid256, l->levels, &a1, &r1, &X1);
                }
                _mm_storeu_si128((__m128i *)lo, a0);
                _mm_storeu_si128((__m128i *)(lo + 64), a1);
                _mm_storeu_si128((__m128i *)(lo + 128), r0);
                _mm_storeu_si128((__m128i *)(lo + 192), r1);
                // One level keeps 256 dx (exact): the kernels' scale is then dw * (256 dx).
                _mm_storeu_ps(d + 4 * b, _mm_set1_ps(l->levels == 1 ? db * 256.0f : db));
                if (aux == AUX_NONE) continue;
                // lane j: X of weights 4j..4j+3 plus 16+4j..16+4j+3
                __m512i s = _mm512_add_epi32(X0, X1);
                s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_CDAB));
                s = _mm512_add_epi32(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));
                __m128i v = _mm512_castsi512_si128(_mm512_permutexvar_epi32(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), s));
                v = aux == AUX_NEG_SUM8     ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 3))
                    : aux == AUX_NEG_SUM16  ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 4))
                    : aux == AUX_NEG_SUM128 ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 7))
                                            : _mm_castps_si128(_mm_cvtepi32_ps(v));
                // One level: the integer aux words are multiples of 256 (X = 256 q1); the kernels
                // take them divided by 256, exactly, to seed p / 256.
                if (l->levels == 1 && aux != AUX_SUM_F32) v = _mm_srai_epi32(v, 8);
                _mm_storeu_si128((__m128i *)(base + l->aux_off + g * 64 + 16 * k), v);
            }
        } else {
            int32_t *bsums = (int32_t *)(base + l->aux_off);
            for (int64_t b = 0; b < l->n_blocks; b++) {
                const float *xb = xt + 256 * b;
                float amax = 0;
                for (int i = 0; i < 16; i++) amax = amax16(_mm512_loadu_ps(xb + 16 * i), amax);
                float id = amax > 0 ? 127.0f / amax : 0.0f;
                d[b] = amax / 127.0f / 256.0f;
                __m512 vid = _mm512_set1_ps(id), vid256 = _mm512_set1_ps(id * 256.0f);
                for (int i = 0; i < 16; i++) {
                    __m128i q1, q2;
                    __m512i X;
                    quantize16(_mm512_loadu_ps(xb + 16 * i), vid, vid256, l->levels, &q1, &q2, &X);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 16 * i), q1);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 256 + 16 * i), q2);
                    _mm256_storeu_si256((__m256i *)(qs + ACT256_STRIDE * b + ACT256_X16 + 32 * i), _mm512_cvtepi32_epi16(X));
                    bsums[16 * b + i] = _mm512_reduce_add_epi32(X);
                }
            }
        }
    }
}

// Decode tuning (overridable with -D for experiments): rows per decode tile, how many tiles ahead
// to prefetch, and the prefetch hint. On the 2-core Zen 5 development machine 4 rows beat 2 and 8,
// and 2 tiles ahead beat 1 and 4 (none at all halved the bandwidth); the hint made no difference
// there, and on Zen 4 prefetching into L2 (T1) streams the K-quants faster than into L1 (BENCHMARKS.md).
#ifndef PF_TILES
#define PF_TILES 2
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
#ifndef DEC_R
#define DEC_R 4
#endif
#ifndef BNB4_DEC_STREAM
#define BNB4_DEC_STREAM -1  // NF4/FP4 double-quant decode: -1 BNB4_STREAM_R rows where the simple quants take one, 0 DEC_R rows, 1 BNB4_STREAM_R rows
#endif
#ifndef BNB4_STREAM_R
#define BNB4_STREAM_R 2      // rows per NF4/FP4 decode tile where the simple quants stream one row
#endif
#ifndef BNB4_PF_CODES
#define BNB4_PF_CODES 1   // NF4/FP4 double-quant decode also prefetches the absmax codes' stream
#endif
// Rows per decode tile of the simple quants, chosen per core once: Zen 4 (AMD family 0x19 with AVX-512,
// whose 512-bit units are double-pumped) streams one row at a time fastest, since a row is then one
// sequential read (double-quant NF4/FP4 takes BNB4_STREAM_R rows there); Zen 5 measured 4 rows best
// (BENCHMARKS.md, issue 23).
#include <cpuid.h>
static int simple_decode_one_row(void) {
#ifdef SIMPLE_DEC_ONE_ROW  // tuning experiments: 1 or 0 whatever the core
    return SIMPLE_DEC_ONE_ROW;
#endif
    static int cached = -1;
    if (cached < 0) {
        unsigned a = 0, b = 0, c = 0, d = 0, fam = 0;
        if (__get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541 /* "Auth" */ && __get_cpuid(1, &a, &b, &c, &d)) {
            fam = (a >> 8) & 0xf;
            if (fam == 0xf) fam += (a >> 20) & 0xff;
        }
        cached = fam == 0x19;
    }
    return cached;
}

// ---- simple quants (blocks of 32) -----------------------------------------------------------
// A group is 4 blocks. Each type's unpack gathers the 4 x 16 low-half and high-half weight bytes of
// a group into block order (lo, hi: byte 16k + i = weight i / 16 + i of block k), the f16 scales
// repeated for each block's 4 lanes (dw) and for Q4_1/Q5_1 the mins (mw). All block starts sit at
// even offsets, so 16-bit permutes gather them. `n` is the number of real blocks (4 but at the end
// of a row); loads never reach past them, and missing blocks come out as zero.

typedef struct { __m512i lo, hi; __m512 dw, mw; __mmask64 neg_lo, neg_hi; } sgroup;

// Byte mask of the part of [offset, offset + 64) that lies inside the first `valid` bytes.
INL __mmask64 span_mask(int64_t valid, int64_t offset) {
    int64_t n = valid - offset;
    if (n <= 0) return 0;
    if (n >= 64) return ~(__mmask64)0;
    return ((__mmask64)1 << n) - 1;
}

// Loads 64 bytes at p + offset of a group whose first `valid` bytes may be read.
INL __m512i group_load(const uint8_t *p, int64_t offset, int64_t valid, int full) {
    if (full && offset + 64 <= valid) return _mm512_loadu_si512(p + offset);
    return _mm512_maskz_loadu_epi8(span_mask(valid, offset), p + offset);
}

INL __m512 f16x16(__m512i v0, __m512i v1, __m512i idx) {
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(v0, idx, v1)));
}

// Word indices: out word 8k + i <- word `stride * k + first + i`; scales: lane 4k + j <- word stride * k + at.
#define QS_IDX(stride, first)                                                                                 \
    _mm512_set_epi16(3 * stride + first + 7, 3 * stride + first + 6, 3 * stride + first + 5, 3 * stride + first + 4, \
                     3 * stride + first + 3, 3 * stride + first + 2, 3 * stride + first + 1, 3 * stride + first,   \
                     2 * stride + first + 7, 2 * stride + first + 6, 2 * stride + first + 5, 2 * stride + first + 4, \
                     2 * stride + first + 3, 2 * stride + first + 2, 2 * stride + first + 1, 2 * stride + first,   \
                     stride + first + 7, stride + first + 6, stride + first + 5, stride + first + 4,               \
                     stride + first + 3, stride + first + 2, stride + first + 1, stride + first,                   \
                     first + 7, first + 6, first + 5, first + 4, first + 3, first + 2, first + 1, first)
#define SC_IDX(stride, at)                                                                                    \
    _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3 * stride + at, 3 * stride + at,         \
                     3 * stride + at, 3 * stride + at, 2 * stride + at, 2 * stride + at, 2 * stride + at,        \
                     2 * stride + at, stride + at, stride + at, stride + at, stride + at, at, at, at, at)

INL void nibbles(__m512i qs, sgroup *g) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    g->lo = _mm512_and_si512(qs, m4);
    g->hi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), m4);
}

// Fifth bits (Q5_0/Q5_1): qh holds 32 bits per block, bit i for weight i. Gathers the 4 blocks'
// low and high 16-bit halves into two 64-bit masks and sets bit 4 of the selected bytes.
INL void fifth_bits(__m512i v0, __m512i v1, __m512i idx_qh, sgroup *g) {
    __m128i h = _mm512_castsi512_si128(_mm512_permutex2var_epi16(v0, idx_qh, v1));
    __mmask64 klo = _cvtu64_mask64((uint64_t)_mm_cvtsi128_si64(h));
    __mmask64 khi = _cvtu64_mask64((uint64_t)_mm_extract_epi64(h, 1));
    const __m512i b4 = _mm512_set1_epi8(0x10);
    g->lo = _mm512_mask_add_epi8(g->lo, klo, g->lo, b4);
    g->hi = _mm512_mask_add_epi8(g->hi, khi, g->hi, b4);
}

// Q4_0: 18-byte blocks {d, qs[16]}.
INL void unpack_q4_0(const uint8_t *p, int n, sgroup *g) {
    const int64_t valid = 18 * n;
    __m512i v0 = group_load(p, 0, valid, n == 4), v1 = n == 4 ? load_zext64(p + 64) : group_load(p, 64, valid, 0);
    nibbles(_mm512_permutex2var_epi16(v0, QS_IDX(9, 1), v1), g);
    g->dw = f16x16(v0, v1, SC_IDX(9, 0));
}

// Q4_1: 20-byte blocks {d, m, qs[16]}.
INL void unpack_q4_1(const uint8_t *p, int n, sgroup *g) {
    const int64_t valid = 20 * n;
    __m512i v0 = group_load(p, 0, valid, n == 4);
    __m512i v1 = n == 4 ? _mm512_zextsi128_si512(_mm_loadu_si128((const __m128i *)(p + 64))) : group_load(p, 64, valid, 0);
    nibbles(_mm512_permutex2var_epi16(v0, QS_IDX(10, 2), v1), g);
    g->dw = f16x16(v0, v1, SC_IDX(10, 0));
    g->mw = f16x16(v0, v1, SC_IDX(10, 1));
}

// Q5_0: 22-byte blocks {d, qh[4], qs[16]}.
INL void unpack_q5_0(const uint8_t *p, int n, sgroup *g) {
    const int64_t valid = 22 * n;
    __m512i v0 = group_load(p, 0, valid, 0), v1 = group_load(p, 64, valid, 0);
    nibbles(_mm512_permutex2var_epi16(v0, QS_IDX(11, 3), v1), g);
    fifth_bits(v0, v1, _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        35, 24, 13, 2, 34, 23, 12, 1), g);
    g->dw = f16x16(v0, v1, SC_IDX(11, 0));
}

// Q5_1: 24-byte blocks {d, m, qh[4], qs[16]}.
INL void unpack_q5_1(const uint8_t *p, int n, sgroup *g) {
    const int64_t valid = 24 * n;
    __m512i v0 = group_load(p, 0, valid, n == 4);
    __m512i v1 = n == 4 ? _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 64))) : group_load(p, 64, valid, 0);
    nibbles(_mm512_permutex2var_epi16(v0, QS_IDX(12, 4), v1), g);
    fifth_bits(v0, v1, _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        39, 27, 15, 3, 38, 26, 14, 2), g);
    g->dw = f16x16(v0, v1, SC_IDX(12, 0));
    g->mw = f16x16(v0, v1, SC_IDX(12, 1));
}

// Q8_0: 34-byte blocks {d, qs[32]}, 136 bytes a group: the low halves are gathered from the bytes at
// 0..127, the high halves from 8..135, so no load crosses the group. vpdpbusd wants unsigned
// weights: lo/hi keep |w| and neg_lo/neg_hi mark the negative ones, whose activations get negated.
INL void unpack_q8_0(const uint8_t *p, int n, sgroup *g) {
    const int64_t valid = 34 * n;
    __m512i a0 = group_load(p, 0, valid, n == 4), a1 = group_load(p, 64, valid, n == 4);
    __m512i b0 = group_load(p, 8, valid, n == 4), b1 = group_load(p, 72, valid, n == 4);
    __m512i lo = _mm512_permutex2var_epi16(a0, QS_IDX(17, 1), a1);
    __m512i hi = _mm512_permutex2var_epi16(b0, QS_IDX(17, 5), b1);
    g->neg_lo = _mm512_movepi8_mask(lo);
    g->neg_hi = _mm512_movepi8_mask(hi);
    g->lo = _mm512_abs_epi8(lo);
    g->hi = _mm512_abs_epi8(hi);
    g->dw = f16x16(a0, a1, SC_IDX(17, 0));
}

enum { STEP_AUX_INT, STEP_MIN, STEP_SIGNED };

// The canonical lane arithmetic of one (row, token) pair over one group: p = 256 * (w . q1) +
// (w . q2) (+ the code offset, which the quantizer folded into aux), then the f32 steps.
// With one level (ONE), q2 is zero and its two products are skipped: same integers, same bits.
INL __m512 simple_step(__m512 acc, const sgroup *w, const uint8_t *x, const act_layout *L, int64_t g, int mode,
                       const int ONE) {
    const uint8_t *xq = x + L->qs_off + 256 * g;
    __m512i x1l = _mm512_load_si512(xq), x1h = _mm512_load_si512(xq + 64);
    const __m512 dx = _mm512_load_ps((const float *)(x + L->d_off) + 16 * g);
    const __m512i zero = _mm512_setzero_si512();
    if (mode == STEP_SIGNED) {
        x1l = _mm512_mask_sub_epi8(x1l, w->neg_lo, zero, x1l);
        x1h = _mm512_mask_sub_epi8(x1h, w->neg_hi, zero, x1h);
    }
    if (ONE) {
        // One level (kernels_internal.h): p / 256 times the scale 256 dw dx. The quantizer stored
        // 256 dx and the integer aux divided by 256 (both exact); the tile divided mw by 256.
        __m512i i1 = mode == STEP_AUX_INT ? _mm512_load_si512(x + L->aux_off + 64 * g) : zero;
        i1 = _mm512_dpbusd_epi32(i1, w->lo, x1l);
        i1 = _mm512_dpbusd_epi32(i1, w->hi, x1h);
        acc = _mm512_fmadd_ps(_mm512_mul_ps(w->dw, dx), _mm512_cvtepi32_ps(i1), acc);
        if (mode == STEP_MIN)
            acc = _mm512_fmadd_ps(_mm512_mul_ps(w->mw, dx), _mm512_load_ps((const float *)(x + L->aux_off) + 16 * g), acc);
        return acc;
    }
    __m512i i1 = _mm512_dpbusd_epi32(zero, w->lo, x1l);
    i1 = _mm512_dpbusd_epi32(i1, w->hi, x1h);
    __m512i i2 = mode == STEP_AUX_INT ? _mm512_load_si512(x + L->aux_off + 64 * g) : zero;
    {
        __m512i x2l = _mm512_load_si512(xq + 128), x2h = _mm512_load_si512(xq + 192);
        if (mode == STEP_SIGNED) {
            x2l = _mm512_mask_sub_epi8(x2l, w->neg_lo, zero, x2l);
            x2h = _mm512_mask_sub_epi8(x2h, w->neg_hi, zero, x2h);
        }
        i2 = _mm512_dpbusd_epi32(i2, w->lo, x2l);
        i2 = _mm512_dpbusd_epi32(i2, w->hi, x2h);
    }
    __m512i ia = _mm512_add_epi32(_mm512_slli_epi32(i1, 8), i2);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(w->dw, dx), _mm512_cvtepi32_ps(ia), acc);
    if (mode == STEP_MIN)
        acc = _mm512_fmadd_ps(_mm512_mul_ps(w->mw, dx), _mm512_load_ps((const float *)(x + L->aux_off) + 16 * g), acc);
    return acc;
}

// R rows x T tokens over whole rows; with prefetch, the rows two tiles ahead are pulled in meanwhile
// (one tile ahead left the stream short of data on this 2-core machine; two reached ~85% of a plain
// read loop's bandwidth).
#define SIMPLE_TILE(name, GROUP_BYTES, MODE)                                                                   \
    INL void name##_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch,     \
                         const int ONE) {                                                                      \
        const act_layout *L = &a->layout;                                                                      \
        const int64_t nb = a->cols / 32, nfull = nb / 4;                                                       \
        const int rem = (int)(nb % 4);                                                                         \
        __m512 acc[8][8];                                                                                      \
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps(); \
        const uint8_t *w = a->w + r * a->row_bytes;                                                            \
        const int64_t rb = a->row_bytes, tb = L->token_bytes;                                                  \
        const uint8_t *x0 = a->act + t * tb;                                                                   \
        for (int64_t g = 0; g < nfull; g++) {                                                                  \
            if (prefetch) {                                                                                    \
                const uint8_t *pf = w + PF_TILES * R * rb + g * (GROUP_BYTES) * R;                             \
                UNROLL for (int i = 0; i < (R * (GROUP_BYTES) + 63) / 64 + 1; i++)                             \
                    _mm_prefetch((const char *)pf + 64 * i, PF_HINT);                                          \
            }                                                                                                  \
            UNROLL for (int i = 0; i < R; i++) {                                                               \
                sgroup wg;                                                                                     \
                unpack_##name(w + i * rb + (GROUP_BYTES) * g, 4, &wg);                                         \
                if (ONE && (MODE) == STEP_MIN) wg.mw = _mm512_mul_ps(wg.mw, _mm512_set1_ps(1.0f / 256.0f));    \
                UNROLL for (int j = 0; j < T; j++) acc[i][j] = simple_step(acc[i][j], &wg, x0 + j * tb, L, g, MODE, ONE); \
            }                                                                                                  \
        }                                                                                                      \
        if (rem) {                                                                                             \
            UNROLL for (int i = 0; i < R; i++) {                                                               \
                sgroup wg;                                                                                     \
                unpack_##name(w + i * rb + (GROUP_BYTES) * nfull, rem, &wg);                                   \
                if (ONE && (MODE) == STEP_MIN) wg.mw = _mm512_mul_ps(wg.mw, _mm512_set1_ps(1.0f / 256.0f));    \
                UNROLL for (int j = 0; j < T; j++) acc[i][j] = simple_step(acc[i][j], &wg, x0 + j * tb, L, nfull, MODE, ONE); \
            }                                                                                                  \
        }                                                                                                      \
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++)                                  \
            a->y[(t + j) * a->rows + r + i] = reduce16(acc[i][j]);                                             \
    }

SIMPLE_TILE(q4_0, 72, STEP_AUX_INT)
SIMPLE_TILE(q4_1, 80, STEP_MIN)
SIMPLE_TILE(q5_0, 88, STEP_AUX_INT)
SIMPLE_TILE(q5_1, 96, STEP_MIN)
SIMPLE_TILE(q8_0, 136, STEP_SIGNED)

// ---- bitsandbytes (kernels_internal.h) -----------------------------------------------------------
// Both types go through simple_step's STEP_AUX_INT arithmetic: unsigned weights (4-bit codes looked
// up as T + 128, int8 with the sign bit flipped), lanes seeded with -128 * xs, scale dw * dx where
// dw is the block's absmax (4-bit) or 1 (int8, whose row scale multiplies the final sum).

// Group g of a 4-bit row: 64 packed bytes = 4 activation blocks. vpshufb looks up the high (even
// elements) and low (odd) nibbles; unpacklo / unpackhi interleave them per 128-bit lane, which is
// exactly one block's weights 0..15 and 16..31. n < 4: only n blocks are read; the rest are 0 codes
// against zero activations.
INL void unpack_bnb4(const uint8_t *p, int n, __m512i utab, sgroup *g) {
    __m512i v = n == 4 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(span_mask(16 * n, 0), p);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i even = _mm512_shuffle_epi8(utab, _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
    __m512i odd = _mm512_shuffle_epi8(utab, _mm512_and_si512(v, m4));
    g->lo = _mm512_unpacklo_epi8(even, odd);
    g->hi = _mm512_unpackhi_epi8(even, odd);
}

// The absmax of each of the n activation blocks from element e0 (0 past n), on the block's 4 lanes.
INL __m512 bnb4_dw(const bnb4_ctx *c, int64_t e0, int n) {
    float am[4];
    int64_t prev = bnb4_block_of(c, e0);
    am[0] = bnb4_absmax(c, prev);
    UNROLL for (int k = 1; k < 4; k++) {
        if (k >= n) { am[k] = 0; continue; }
        int64_t b = bnb4_block_of(c, e0 + 32 * k);
        am[k] = b == prev ? am[k - 1] : bnb4_absmax(c, b);
        prev = b;
    }
    const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(am)));
}

// bnb4_ctx_init in a few vector instructions (it runs once per tile of 4 rows; the scalar loop
// cost ~15% of a 4096-column decode). Same values: cvtps2dq rounds half to even like rintf.
INL void bnb4_ctx_init512(bnb4_ctx *c, const puna_bnb4_weight *w) {
    c->w = w;
    __m512 q = _mm512_loadu_ps(w->quant_map);
    float m = _mm512_reduce_max_ps(_mm512_abs_ps(q));
    __m512i t = _mm512_setzero_si512();
    if (m > 0) {
        t = _mm512_cvtps_epi32(_mm512_mul_ps(q, _mm512_set1_ps(127.0f / m)));
        t = _mm512_min_epi32(_mm512_max_epi32(t, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
    }
    _mm_storeu_si128((__m128i *)c->T, _mm512_cvtepi32_epi8(t));
    _mm_storeu_si128((__m128i *)c->U, _mm512_cvtepi32_epi8(_mm512_add_epi32(t, _mm512_set1_epi32(128))));
    c->mscale = m > 0 ? m / 127.0f : 0.0f;
    c->blk_shift = bnb_log2(w->blocksize);
    c->nest_shift = w->absmax_codes ? bnb_log2(w->nested_blocksize) : -1;
}

// The absmax of the n (1..16) bnb blocks from b0 (lanes past n: unused), 16 at a time: gathers
// from the code tables instead of 16 scalar look-ups. Needs a power-of-two nested block size.
INL __m512 bnb4_absmax16(const bnb4_ctx *c, int64_t b0, int n) {
    const puna_bnb4_weight *w = c->w;
    const __mmask16 m = n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
    if (!w->absmax_codes) return _mm512_maskz_loadu_ps(m, w->absmax + b0);
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512i code = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, w->absmax_codes + b0));
    __m512 q = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, code, w->nested_quant_map, 4);
    // nested index (b0 + i) >> shift, in int32 from the small offset within b0's nested block
    const int64_t within = b0 & ((int64_t)w->nested_blocksize - 1);
    __m512i idx = _mm512_add_epi32(_mm512_set1_epi32((int)(b0 >> c->nest_shift)),
                                   _mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32((int)within), iota), c->nest_shift));
    __m512 na = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, w->nested_absmax, 4);
    __m512 p = _mm512_mul_ps(q, na);
    __asm__("" : "+v"(p));  // rounded before the offset is added (kernels_internal.h), never fused
    return _mm512_add_ps(p, _mm512_set1_ps(w->nested_offset));
}

// Group g of an int8 row: 128 bytes, blocks 0, 1 in the first 64 and 2, 3 in the second; 128-bit
// lanes 0, 2 of each are the blocks' first halves, 1, 3 the second halves.
INL void unpack_bnb8(const uint8_t *p, int n, sgroup *g) {
    __m512i a = n == 4 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(span_mask(32 * n, 0), p);
    __m512i b = n == 4 ? _mm512_loadu_si512(p + 64) : _mm512_maskz_loadu_epi8(span_mask(32 * n, 64), p + 64);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    g->lo = _mm512_xor_si512(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0)), flip);
    g->hi = _mm512_xor_si512(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1)), flip);
    g->dw = _mm512_set1_ps(1.0f);
}

// R rows x T tokens over whole rows (BITS 4 or 8); prefetching as SIMPLE_TILE.
INL void bnb_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE,
                  const int BITS) {
    const act_layout *L = &a->layout;
    const int64_t cols = a->cols, nb = cols / 32, nfull = nb / 4, tb = L->token_bytes;
    const int rem = (int)(nb % 4);
    const int64_t rb = BITS == 4 ? cols / 2 : cols, gbytes = BITS == 4 ? 64 : 128;
    bnb4_ctx c;
    const uint8_t *w;
    __m512i utab = _mm512_setzero_si512();
    if (BITS == 4) {
        bnb4_ctx_init512(&c, (const puna_bnb4_weight *)(const void *)a->w);
        utab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)c.U));
        w = c.w->packed + r * rb;
    } else {
        w = (const uint8_t *)((const puna_bnb_int8_weight *)(const void *)a->w)->weight + r * rb;
    }
    __m512 acc[8][8];
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps();
    const uint8_t *x0 = a->act + t * tb;
    for (int64_t g = 0; g < nfull + (rem ? 1 : 0); g++) {
        const int n = g < nfull ? 4 : rem;
        if (prefetch && n == 4) {
            const uint8_t *pf = w + PF_TILES * R * rb + g * gbytes * R;
            UNROLL for (int i = 0; i < (R * (int)gbytes + 63) / 64 + 1; i++) _mm_prefetch((const char *)pf + 64 * i, PF_HINT);
        }
        UNROLL for (int i = 0; i < R; i++) {
            sgroup wg;
            if (BITS == 4) {
                unpack_bnb4(w + i * rb + 64 * g, n, utab, &wg);
                wg.dw = bnb4_dw(&c, (r + i) * cols + 128 * g, n);
            } else {
                unpack_bnb8(w + i * rb + 128 * g, n, &wg);
            }
            UNROLL for (int j = 0; j < T; j++) acc[i][j] = simple_step(acc[i][j], &wg, x0 + j * tb, L, g, STEP_AUX_INT, ONE);
        }
    }
    UNROLL for (int i = 0; i < R; i++) {
        const float scale = BITS == 4 ? c.mscale
                                      : ((const puna_bnb_int8_weight *)(const void *)a->w)->row_scale[r + i] * (1.0f / 127.0f);
        UNROLL for (int j = 0; j < T; j++) a->y[(t + j) * a->rows + r + i] = reduce16(acc[i][j]) * scale;
    }
}

// Decoding: group g's share of the tile PF_TILES tiles ahead (R + 1 lines: R rows x 64 bytes, rounded up).
INL void bnb4_prefetch_group(const uint8_t *w, int64_t rb, int64_t g, const int R) {
    const uint8_t *pf = w + PF_TILES * R * rb + g * 64 * R;
    UNROLL for (int i = 0; i < R + 1; i++) _mm_prefetch((const char *)pf + 64 * i, PF_HINT);
}

// One group of R rows x T tokens with the row's absmax vectors am16 (blocks of 64): group k (0..7)
// of the current 16-block chunk takes lanes 2k, 2k + 1. Defined once per unpack (and its target).
#define BNB4_FAST_GROUP(name, ATTRS, UNPACK)                                                                   \
    ATTRS void name(__m512 acc[8][8], const uint8_t *w, int64_t rb, int64_t g, int k, int n, __m512i utab,    \
                    const __m512 *am16, const uint8_t *x0, int64_t tb, const act_layout *L, const int R,      \
                    const int T, const int ONE) {                                                             \
        const __m512i idx = _mm512_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, \
                                             2 * k + 1, 2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k, 2 * k,   \
                                             2 * k, 2 * k);                                                    \
        UNROLL for (int i = 0; i < R; i++) {                                                                   \
            sgroup wg;                                                                                         \
            UNPACK(w + i * rb + 64 * g, n, utab, &wg);                                                         \
            wg.dw = _mm512_permutexvar_ps(idx, am16[i]);                                                       \
            UNROLL for (int j = 0; j < T; j++)                                                                 \
                acc[i][j] = simple_step(acc[i][j], &wg, x0 + j * tb, L, g, STEP_AUX_INT, ONE);                 \
        }                                                                                                      \
    }
BNB4_FAST_GROUP(bnb4_fast_group, INL, unpack_bnb4)

// 4-bit rows in blocks of 64 (what transformers writes) with a power-of-two nested block size:
// each row's absmax comes 16 blocks (8 groups) at a time, and the 8 groups of a chunk are unrolled
// so every permute index is a constant.
INL void bnb4_fast_tile(const qmm_args *a, const bnb4_ctx *c, int64_t r, int64_t t, const int R, const int T, int prefetch,
                        const int ONE) {
    const act_layout *L = &a->layout;
    const int64_t cols = a->cols, nb = cols / 32, nfull = nb / 4, tb = L->token_bytes, rb = cols / 2;
    const int64_t row_blocks = cols / 64;
    const int rem = (int)(nb % 4);
    const __m512i utab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)c->U));
    const uint8_t *w = c->w->packed + r * rb, *x0 = a->act + t * tb;
    __m512 acc[8][8], am16[8];
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps();
    int64_t g0 = 0;
    for (; g0 + 8 <= nfull; g0 += 8) {
        UNROLL for (int i = 0; i < R; i++) am16[i] = bnb4_absmax16(c, (r + i) * row_blocks + 2 * g0, 16);
        UNROLL for (int k = 0; k < 8; k++) {
            if (prefetch) bnb4_prefetch_group(w, rb, g0 + k, R);
            bnb4_fast_group(acc, w, rb, g0 + k, k, 4, utab, am16, x0, tb, L, R, T, ONE);
        }
    }
    if (g0 < nfull || rem) {  // the last < 8 groups, the partial one included
        const int64_t left = row_blocks - 2 * g0;
        UNROLL for (int i = 0; i < R; i++) am16[i] = bnb4_absmax16(c, (r + i) * row_blocks + 2 * g0, left < 16 ? (int)left : 16);
        for (int k = 0; g0 + k < nfull + (rem ? 1 : 0); k++) {
            const int n = g0 + k < nfull ? 4 : rem;
            bnb4_fast_group(acc, w, rb, g0 + k, k, n, utab, am16, x0, tb, L, R, T, ONE);
        }
    }
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++)
        a->y[(t + j) * a->rows + r + i] = reduce16(acc[i][j]) * c->mscale;
}

INL void bnb4_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    bnb4_ctx c;
    bnb4_ctx_init512(&c, (const puna_bnb4_weight *)(const void *)a->w);
    if (c.blk_shift == 6 && (!c.w->absmax_codes || c.nest_shift >= 0)) bnb4_fast_tile(a, &c, r, t, R, T, prefetch, ONE);
    else bnb_tile(a, r, t, R, T, prefetch, ONE, 4);
}

// ---- bitsandbytes 4-bit decoding with byte permutes (avx512-vbmi family) ----------------------------
// One token leaves nothing to amortize the double-quant absmax over: the gathers above cost a third
// of a decode. Here the 256-entry f32 nested_quant_map is held as 4 byte planes (byte j of every
// entry, 4 x 64 bytes each) and 64 codes are looked up at once with vpermi2b (128 entries per
// instruction, the code's top bit picking the half), then the planes are interleaved back into f32.
// The nested absmax of 64 consecutive blocks needs at most two values when the nested block size is
// at least 64. Values and roundings are bnb4_absmax's, so results keep the definition's bits.

typedef struct { __m512i p[4][4]; } bnb4_planes;  // p[j][q]: byte j of entries 64q .. 64q + 63

static T512V void bnb4_planes_init(bnb4_planes *t, const float *map) {
    uint8_t bytes[4][256] __attribute__((aligned(64)));
    for (int e = 0; e < 256; e++) {
        uint32_t u;
        memcpy(&u, map + e, 4);
        for (int j = 0; j < 4; j++) bytes[j][e] = (uint8_t)(u >> (8 * j));
    }
    for (int j = 0; j < 4; j++)
        for (int q = 0; q < 4; q++) t->p[j][q] = _mm512_load_si512(bytes[j] + 64 * q);
}

// out[i] = absmax of block b0 + i for i < n (n in 1..64); out[n..63] are unspecified. Needs the
// nested block size to be a power of two >= 64 (shift >= 6).
INLV void bnb4_absmax64(const bnb4_ctx *c, const bnb4_planes *t, int64_t b0, int n, float *out) {
    const puna_bnb4_weight *w = c->w;
    const __mmask64 m = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    // entry 16k + 4L + i goes to byte 16L + 4k + i, so the in-lane unpacks below land in order
    const __m512i order = _mm512_set_epi8(63, 62, 61, 60, 47, 46, 45, 44, 31, 30, 29, 28, 15, 14, 13, 12,
                                          59, 58, 57, 56, 43, 42, 41, 40, 27, 26, 25, 24, 11, 10, 9, 8,
                                          55, 54, 53, 52, 39, 38, 37, 36, 23, 22, 21, 20, 7, 6, 5, 4,
                                          51, 50, 49, 48, 35, 34, 33, 32, 19, 18, 17, 16, 3, 2, 1, 0);
    __m512i code = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(m, w->absmax_codes + b0));
    __mmask64 upper = _mm512_movepi8_mask(code);
    __m512i b[4];
    UNROLL for (int j = 0; j < 4; j++) {
        __m512i lo = _mm512_permutex2var_epi8(t->p[j][0], code, t->p[j][1]);
        __m512i hi = _mm512_permutex2var_epi8(t->p[j][2], code, t->p[j][3]);
        b[j] = _mm512_mask_blend_epi8(upper, lo, hi);
    }
    __m512i l01 = _mm512_unpacklo_epi8(b[0], b[1]), h01 = _mm512_unpackhi_epi8(b[0], b[1]);
    __m512i l23 = _mm512_unpacklo_epi8(b[2], b[3]), h23 = _mm512_unpackhi_epi8(b[2], b[3]);
    __m512 q[4] = { _mm512_castsi512_ps(_mm512_unpacklo_epi16(l01, l23)), _mm512_castsi512_ps(_mm512_unpackhi_epi16(l01, l23)),
                    _mm512_castsi512_ps(_mm512_unpacklo_epi16(h01, h23)), _mm512_castsi512_ps(_mm512_unpackhi_epi16(h01, h23)) };
    // nested blocks: n0 for lanes before the boundary, n0 + 1 after it (read only when reached)
    const int64_t nbs = w->nested_blocksize, n0 = b0 >> c->nest_shift, within = b0 & (nbs - 1);
    const __m512 na0 = _mm512_set1_ps(w->nested_absmax[n0]);
    const __m512 na1 = within + n > nbs ? _mm512_set1_ps(w->nested_absmax[n0 + 1]) : na0;
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512 off = _mm512_set1_ps(w->nested_offset);
    UNROLL for (int k = 0; k < 4; k++) {
        __m512i pos = _mm512_add_epi32(iota, _mm512_set1_epi32((int)within + 16 * k));
        __m512 na = _mm512_mask_blend_ps(_mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32((int)nbs)), na0, na1);
        __m512 p = _mm512_mul_ps(q[k], na);
        __asm__("" : "+v"(p));  // rounded before the offset is added, never fused
        _mm512_store_ps(out + 16 * k, _mm512_add_ps(p, off));
    }
}

// unpack_bnb4 with byte permutes: vpermb reads 6 index bits and utab holds the 16 entries 4 times,
// so the nibble needs no mask (bits 4-5 pick a copy; a word shift's spill from the next byte lands
// there too): two instructions (the masks) fewer per group. Same bytes as unpack_bnb4.
INLV void unpack_bnb4v(const uint8_t *p, int n, __m512i utab, sgroup *g) {
    __m512i v = n == 4 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(span_mask(16 * n, 0), p);
    __m512i even = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), utab);
    __m512i odd = _mm512_permutexvar_epi8(v, utab);
    g->lo = _mm512_unpacklo_epi8(even, odd);
    g->hi = _mm512_unpackhi_epi8(even, odd);
}

BNB4_FAST_GROUP(bnb4v_fast_group, INLV, unpack_bnb4v)

// R rows x T tokens from token t0, decoding (T = 1) and batches: each row's absmax 64 blocks at a
// time from the planes, no gathers.
INLV void bnb4v_tile_impl(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r, int64_t t0, const int R,
                          const int T, int prefetch, const int ONE) {
    const act_layout *L = &a->layout;
    const int64_t cols = a->cols, nb = cols / 32, nfull = nb / 4, rb = cols / 2, tb = L->token_bytes;
    const int64_t row_blocks = cols / 64, ngroups = nfull + (nb % 4 ? 1 : 0);
    const int rem = (int)(nb % 4);
    const __m512i utab = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)c->U));
    const uint8_t *w = c->w->packed + r * rb, *x0 = a->act + t0 * tb;
    float amb[8][64] __attribute__((aligned(64)));
    __m512 acc[8][8], am16[8];
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps();
    if (prefetch && BNB4_PF_CODES) {
        // The absmax codes are a second stream (one byte per 64 weights): the tile PF_TILES ahead
        // asks for its codes' lines too, or each tile would start on a demand miss.
        const uint8_t *codes = c->w->absmax_codes + (r + PF_TILES * R) * row_blocks;
        for (int64_t i = 0; i < (R * row_blocks + 63) / 64 + 1; i++) _mm_prefetch((const char *)codes + 64 * i, PF_HINT);
    }
    for (int64_t g0 = 0; g0 < ngroups; g0 += 32) {  // 32 groups = 64 blocks
        const int64_t left = row_blocks - 2 * g0;
        const int nblk = left < 64 ? (int)left : 64;
        UNROLL for (int i = 0; i < R; i++) bnb4_absmax64(c, t, (r + i) * row_blocks + 2 * g0, nblk, amb[i]);
        const int64_t gend = g0 + 32 < ngroups ? g0 + 32 : ngroups;
        for (int64_t s = g0; s < gend; s += 8) {  // 8 groups share one am16 per row
            UNROLL for (int i = 0; i < R; i++) am16[i] = _mm512_load_ps(amb[i] + 2 * (s - g0));
            if (s + 8 <= nfull) {
                UNROLL for (int k = 0; k < 8; k++) {
                    if (prefetch) bnb4_prefetch_group(w, rb, s + k, R);
                    bnb4v_fast_group(acc, w, rb, s + k, k, 4, utab, am16, x0, tb, L, R, T, ONE);
                }
            } else {
                for (int k = 0; s + k < gend; k++) {
                    const int n = s + k < nfull ? 4 : rem;
                    if (prefetch && n == 4) bnb4_prefetch_group(w, rb, s + k, R);
                    bnb4v_fast_group(acc, w, rb, s + k, k, n, utab, am16, x0, tb, L, R, T, ONE);
                }
            }
        }
    }
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++)
        a->y[(t0 + j) * a->rows + r + i] = reduce16(acc[i][j]) * c->mscale;
}

// Decode tiles: R rows x 1 token.
static T512V void bnb4v_dec4_l1(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, DEC_R, 1, 1, 1); }
static T512V void bnb4v_dec4_l1_last(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, DEC_R, 1, 0, 1); }
static T512V void bnb4v_dec1_l1(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, 1, 1, 0, 1); }
static T512V void bnb4v_decs_l1(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, BNB4_STREAM_R, 1, 1, 1); }
static T512V void bnb4v_decs_l1_last(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, BNB4_STREAM_R, 1, 0, 1); }
static T512V void bnb4v_decs_l2(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, BNB4_STREAM_R, 1, 1, 0); }
static T512V void bnb4v_decs_l2_last(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, BNB4_STREAM_R, 1, 0, 0); }
static T512V void bnb4v_dec4_l2(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, DEC_R, 1, 1, 0); }
static T512V void bnb4v_dec4_l2_last(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, DEC_R, 1, 0, 0); }
static T512V void bnb4v_dec1_l2(const qmm_args *a, const bnb4_ctx *c, const bnb4_planes *t, int64_t r) { bnb4v_tile_impl(a, c, t, r, 0, 1, 1, 0, 0); }

static void bnb4_rows(const qmm_args *a, int64_t r0, int64_t r1);
static void bnb4vb_rows(const qmm_args *a, int64_t r0, int64_t r1);
static T512 void prefetch_first_tiles(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1);

// Whether a descriptor takes the permute path: blocks of 64, double quant, nested blocks a power of two >= 64.
INL int bnb4v_layout(const bnb4_ctx *c) { return c->blk_shift == 6 && c->w->absmax_codes && c->nest_shift >= 6; }

// Batches: the tiles of TILE_FNS take no context, so bnb4v_rows builds the planes of the call's
// weight in this thread's copy before it hands the rows to them (about a microsecond per call).
static __thread bnb4_planes bnb4v_thread_planes __attribute__((aligned(64)));

INLV void bnb4vb_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    bnb4_ctx c;
    bnb4_ctx_init512(&c, (const puna_bnb4_weight *)(const void *)a->w);
    bnb4v_tile_impl(a, &c, &bnb4v_thread_planes, r, t, R, T, prefetch, ONE);
}

// Kept out of bnb4v_rows, whose decode loops it would otherwise share registers with.
static __attribute__((noinline)) T512V void bnb4vb_batch_rows(const qmm_args *a, const float *nested_quant_map, int64_t r0, int64_t r1) {
    bnb4_planes_init(&bnb4v_thread_planes, nested_quant_map);
    bnb4vb_rows(a, r0, r1);
}

// Double-quant NF4/FP4 in blocks of 64 takes the permute path, decoding here and batches in the
// bnb4vb tiles; other layouts the avx512-vnni kernels.
static T512V void bnb4v_rows(const qmm_args *a, int64_t r0, int64_t r1) {
    bnb4_ctx c;
    bnb4_ctx_init512(&c, (const puna_bnb4_weight *)(const void *)a->w);
    if (!bnb4v_layout(&c)) {
        bnb4_rows(a, r0, r1);
        return;
    }
    if (a->n_tokens != 1) {
        bnb4vb_batch_rows(a, c.w->nested_quant_map, r0, r1);
        return;
    }
    bnb4_planes t;
    bnb4_planes_init(&t, c.w->nested_quant_map);
    const int one = a->layout.levels == 1;
    prefetch_first_tiles(c.w->packed, a->cols / 2, r0, r1);  // the packed codes' rows (a->row_bytes is 0 here)
    int64_t r = r0;
    if (BNB4_DEC_STREAM < 0 ? simple_decode_one_row() : BNB4_DEC_STREAM) {
        // Where one row streams fastest for the simple quants, NF4 takes two: the second row shares the
        // activation loads, and the table lookups leave NF4 short of compute with one (BENCHMARKS.md).
        const int64_t sr = BNB4_STREAM_R;
        for (; r + (PF_TILES + 1) * sr <= r1; r += sr) one ? bnb4v_decs_l1(a, &c, &t, r) : bnb4v_decs_l2(a, &c, &t, r);
        for (; r + sr <= r1; r += sr) one ? bnb4v_decs_l1_last(a, &c, &t, r) : bnb4v_decs_l2_last(a, &c, &t, r);
        for (; r < r1; r++) one ? bnb4v_dec1_l1(a, &c, &t, r) : bnb4v_dec1_l2(a, &c, &t, r);
        return;
    }
    for (; r + (PF_TILES + 1) * DEC_R <= r1; r += DEC_R) one ? bnb4v_dec4_l1(a, &c, &t, r) : bnb4v_dec4_l2(a, &c, &t, r);
    for (; r + DEC_R <= r1; r += DEC_R) one ? bnb4v_dec4_l1_last(a, &c, &t, r) : bnb4v_dec4_l2_last(a, &c, &t, r);
    for (; r < r1; r++) one ? bnb4v_dec1_l1(a, &c, &t, r) : bnb4v_dec1_l2(a, &c, &t, r);
}

INL void bnb8_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    bnb_tile(a, r, t, R, T, prefetch, ONE, 8);
}

// ---- K-quants (super-blocks of 256) -------------------------------------------------------------
// Each row's super-block is turned into 256 int16 weights w = sc * code (the sub-block scale folded
// in: |w| <= 31 * 63 for Q5_K, 32 * 128 for Q6_K with signed codes), so the whole integer A of
// kernels_internal.h is 8 vpdpwssd against the int16 activations X: 16 int32 lanes, each at most
// 8 * 2 * 4096 * 32639 < 2^31, summed in int64. B (the mins) is bsums x mins, lane by lane.
// The lane sums of up to 4 (row, token) pairs are reduced together, and their f32 steps run as
// one 4-lane vector (same operations per pair as the scalar code).

typedef struct {
    __m512i w[8];   // weights 32v .. 32v + 31 times their scale, natural order
    __m512i msc;    // Q4_K/Q5_K: int32 m_s at lanes 2s, 2s + 1
    float d, dmin;
} kblock;

INL __m512i bcast32(const uint8_t *p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }

// Q4_K/Q5_K header: d, dmin, the eight 6-bit scales as int16 in the low 128 bits, and the mins as
// int32 at lanes 2s, 2s + 1 (msc). The 12 scale bytes q[0..11] (bytes 4..15 of the block) are
// unpacked as kq_scale_min does, 16 at a time: byte j of the result is scale j, byte 8 + j min j;
// the low bits of scale j are q[j] & 63 (j < 4) or q[j + 4] & 15, of min j q[j + 4] & 63 (j < 4) or
// q[j + 4] >> 4, and the top two bits of scale and min j >= 4 are bits 6-7 of q[j - 4] and q[j].
INL __m128i q45_K_header_bytes(const uint8_t *p, float *d, float *dmin) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m128 dd = _mm_cvtph_ps(v);
    *d = _mm_cvtss_f32(dd);
    *dmin = _mm_cvtss_f32(_mm_movehdup_ps(dd));
    const __m128i low_src = _mm_setr_epi8(4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i top_src = _mm_setr_epi8(-1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11);
    const __m128i low_mask = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15);
    __m128i lo = _mm_shuffle_epi8(v, low_src);
    lo = _mm_mask_blend_epi8((__mmask16)0xf000, lo, _mm_srli_epi16(lo, 4));  // mins 4..7: the high nibble
    lo = _mm_and_si128(lo, low_mask);
    const __m128i top = _mm_srli_epi16(_mm_and_si128(_mm_shuffle_epi8(v, top_src), _mm_set1_epi8((char)0xc0)), 2);
    return _mm_or_si128(lo, top);
}

INL __m512i q45_K_header(const uint8_t *p, float *d, float *dmin, __m512i *msc) {
    const __m128i sm = q45_K_header_bytes(p, d, dmin);
    const __m128i min_pairs = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    *msc = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(sm, min_pairs));
    return _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
}

// Q4_K/Q5_K: {d, dmin, scales[12], (qh[32]), qs[128]}; sub-blocks 2c, 2c + 1 are the low and high
// nibbles of qs[32c .. 32c + 31]; bit 4 of weight l of sub-block s (Q5_K) is bit s of qh[l].
INL void unpack_q45_K(const uint8_t *p, int q5, kblock *k) {
    // (vpermw broadcasts of the scales measured 1.3x faster here than broadcast loads from a stack copy)
    __m512i sc16 = q45_K_header(p, &k->d, &k->dmin, &k->msc);
    const __m512i m4 = _mm512_set1_epi16(0x0f);
    const uint8_t *qs = p + (q5 ? 48 : 16);
    __m512i hbits = q5 ? _mm512_slli_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 16))), 4)
                       : _mm512_setzero_si512();
    UNROLL for (int c = 0; c < 4; c++) {
        __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(qs + 32 * c)));
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_srli_epi16(v, 4);
        if (q5) {
            const __m512i b4 = _mm512_set1_epi16(0x10);
            lo = _mm512_or_si512(lo, _mm512_and_si512(_mm512_srli_epi16(hbits, 2 * c), b4));
            hi = _mm512_or_si512(hi, _mm512_and_si512(_mm512_srli_epi16(hbits, 2 * c + 1), b4));
        }
        k->w[2 * c] = _mm512_mullo_epi16(lo, _mm512_permutexvar_epi16(_mm512_set1_epi16((short)(2 * c)), sc16));
        k->w[2 * c + 1] = _mm512_mullo_epi16(hi, _mm512_permutexvar_epi16(_mm512_set1_epi16((short)(2 * c + 1)), sc16));
    }
}

// Q6_K: {ql[128], qh[64], scales[16], d}. Weights 128h + 32s + l (s < 4): low nibble of
// ql[64h + 32(s & 1) + l] (high nibble for s >= 2), top bits 2s..2s+1 of qh[32h + l].
INL void unpack_q6_K(const uint8_t *p, kblock *k) {
    k->d = _cvtsh_ss(kq_load16(p + 208));
    k->dmin = 0;
    k->msc = _mm512_setzero_si512();
    __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192))));
    const __m512i sh_a = _mm512_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x03), c32 = _mm512_set1_epi8(32);
    const __m512i pick = _mm512_set_epi16(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    UNROLL for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512(p + 64 * h);
        __m512i qh = bcast32(p + 128 + 32 * h);
        // quarters 0, 1: low nibbles, qh bits 0-1 / 2-3; quarters 2, 3: high nibbles, bits 4-5 / 6-7
        __m512i h01 = _mm512_and_si512(_mm512_srlv_epi16(qh, sh_a), m2);
        __m512i h23 = _mm512_and_si512(_mm512_srlv_epi16(qh, _mm512_add_epi16(sh_a, _mm512_set1_epi16(4))), m2);
        __m512i c01 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(h01, 4));
        __m512i c23 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_slli_epi16(h23, 4));
        c01 = _mm512_sub_epi8(c01, c32);
        c23 = _mm512_sub_epi8(c23, c32);
        // 32 weights per vector = two sub-blocks of 16
        const int v0 = 4 * h;
        k->w[v0] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(c01)),
                                      _mm512_permutexvar_epi16(_mm512_add_epi16(pick, _mm512_set1_epi16((short)(2 * v0))), sc16));
        k->w[v0 + 1] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(c01, 1)),
                                          _mm512_permutexvar_epi16(_mm512_add_epi16(pick, _mm512_set1_epi16((short)(2 * v0 + 2))), sc16));
        k->w[v0 + 2] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_castsi512_si256(c23)),
                                          _mm512_permutexvar_epi16(_mm512_add_epi16(pick, _mm512_set1_epi16((short)(2 * v0 + 4))), sc16));
        k->w[v0 + 3] = _mm512_mullo_epi16(_mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(c23, 1)),
                                          _mm512_permutexvar_epi16(_mm512_add_epi16(pick, _mm512_set1_epi16((short)(2 * v0 + 6))), sc16));
    }
}

// The integer part of one (row, token) pair: A's 16 int32 lanes and B's (Q4_K/Q5_K).
INL void k_pair(const kblock *w, const uint8_t *x, const act_layout *L, int64_t b, int q6, __m512i *ia, __m512i *mb) {
    const uint8_t *xq = x + L->qs_off + ACT256_STRIDE * b + ACT256_X16;
    __m512i acc = _mm512_setzero_si512();
    UNROLL for (int v = 0; v < 8; v++) acc = _mm512_dpwssd_epi32(acc, w->w[v], _mm512_load_si512(xq + 64 * v));
    *ia = acc;
    *mb = q6 ? _mm512_setzero_si512() : _mm512_mullo_epi32(_mm512_load_si512(x + L->aux_off + 64 * b), w->msc);
}

// ---- K-quants with one activation level --------------------------------------------------------
// With one level X = 256 q1, so A = 256 A1 with A1 = sum_s sc_s sum_{i in s} c_i q1_i, and
// (float)A = 256 (float)A1 exactly: the int8 codes meet the int8 q1 directly (vpmaddubsw, no
// saturation: 2 * 63 * 127 < 2^15), the pair sums meet the sub-block scales (vpdpwssd), and A1 fits
// int32 (|A1| <= 256 * 128 * 63 * 127 for Q6_K's unsigned codes). Half the multiplies of the int16
// path and no per-row widening of the weights. B (the mins) is the same integer as before.

typedef struct {
    __m512i c[4];   // unsigned codes: Q6_K weights 64v .. 64v + 63; Q4_K/Q5_K see unpack1_q45_K
    __m512i s[4];   // int16: the scale of each word's two weights
    __m256i sc6;    // Q6_K: int16 sc_s of each 16 at word s (for the -32 offset)
    __m128i mins;   // Q4_K/Q5_K: int16 m_s at word s
    float d, dmin;
} kcodes;

INL void unpack1_q45_K(const uint8_t *p, int q5, kcodes *k) {
    const __m128i sm = q45_K_header_bytes(p, &k->d, &k->dmin);
    k->mins = _mm_unpackhi_epi8(sm, _mm_setzero_si128());
    const __m512i sc16 = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
    const __m512i m4 = _mm512_set1_epi8(0x0f), one = _mm512_set1_epi8(0x01);
    const uint8_t *qs = p + (q5 ? 48 : 16);
    // word w of vector v holds weights of sub-block 4 (v / 2) + (v & 1) + 2 (w / 16): the nibbles
    // stay where they are and the activations are paired to match (k_pair1), once per tile
    const __m512i half = _mm512_set_epi16(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    __m512i qh = q5 ? bcast32(p + 16) : _mm512_setzero_si512();
    UNROLL for (int h = 0; h < 2; h++) {
        // low nibbles: sub-blocks 4h (bytes 0-31), 4h + 2 (32-63); high nibbles: 4h + 1, 4h + 3
        __m512i v = _mm512_loadu_si512(qs + 64 * h);
        __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        if (q5) {
            // bit s of qh[l] is bit 4 of weight l of sub-block s; word shifts, then one bit per byte
            __m512i sl = _mm512_add_epi16(_mm512_set1_epi16((short)(4 * h)), _mm512_slli_epi16(half, 1));
            __m512i hl = _mm512_and_si512(_mm512_srlv_epi16(qh, sl), one);
            __m512i hh = _mm512_and_si512(_mm512_srlv_epi16(qh, _mm512_add_epi16(sl, _mm512_set1_epi16(1))), one);
            lo = _mm512_or_si512(lo, _mm512_slli_epi16(hl, 4));
            hi = _mm512_or_si512(hi, _mm512_slli_epi16(hh, 4));
        }
        k->c[2 * h] = lo;
        k->c[2 * h + 1] = hi;
    }
    UNROLL for (int v = 0; v < 4; v++)
        k->s[v] = _mm512_permutexvar_epi16(_mm512_add_epi16(_mm512_slli_epi16(half, 1), _mm512_set1_epi16((short)(4 * (v / 2) + (v & 1)))), sc16);
}

INL void unpack1_q6_K(const uint8_t *p, kcodes *k) {
    k->d = _cvtsh_ss(kq_load16(p + 208));
    k->dmin = 0;
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
    k->sc6 = sc16;
    // top bits 2s..2s+1 of qh moved to bits 4-5 of each byte by one word shift (left 4 / 2 for
    // quarters 0 / 1, right 0 / 2 for 2 / 3: no bit that crosses a byte survives the mask 0x30)
    const __m512i sh_r = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh_l = _mm512_sub_epi16(_mm512_set1_epi16(4), sh_r);
    const __m512i m4 = _mm512_set1_epi8(0x0f), m30 = _mm512_set1_epi8(0x30);
    UNROLL for (int h = 0; h < 2; h++) {
        __m512i ql = _mm512_loadu_si512(p + 64 * h);
        __m512i qh = bcast32(p + 128 + 32 * h);
        k->c[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, sh_l), m30));
        k->c[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(_mm512_srlv_epi16(qh, sh_r), m30));
    }
    // word w of vector v holds weights of sub-block (of 16) 4v + w / 8
    const __m512i quarter = _mm512_set_epi16(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2,
                                             1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    UNROLL for (int v = 0; v < 4; v++)
        k->s[v] = _mm512_permutexvar_epi16(_mm512_add_epi16(quarter, _mm512_set1_epi16((short)(4 * v))), _mm512_castsi256_si512(sc16));
}

// A1's 16 int32 lanes and B's lanes (Q4_K/Q5_K) of one (row, token) pair.
INL void k_pair1(const kcodes *w, const uint8_t *x, const act_layout *L, int64_t b, int q6, __m512i *ia, __m512i *mb) {
    const uint8_t *xq = x + L->qs_off + ACT256_STRIDE * b;
    const __m512i bs = _mm512_load_si512(x + L->aux_off + 64 * b);
    // two chains of two: half the dependent latency per pair (measured a few % faster on Zen 4)
    __m512i acc0 = _mm512_setzero_si512(), acc1 = _mm512_setzero_si512();
    UNROLL for (int v = 0; v < 4; v += 2) {
        __m512i x0 = _mm512_load_si512(xq + 64 * v), x1 = _mm512_load_si512(xq + 64 * v + 64);
        if (!q6) {
            __m512i xl = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(1, 0, 1, 0));
            x1 = _mm512_shuffle_i64x2(x0, x1, _MM_SHUFFLE(3, 2, 3, 2));
            x0 = xl;
        }
        acc0 = _mm512_dpwssd_epi32(acc0, _mm512_maddubs_epi16(w->c[v], x0), w->s[v]);
        acc1 = _mm512_dpwssd_epi32(acc1, _mm512_maddubs_epi16(w->c[v + 1], x1), w->s[v + 1]);
    }
    const __m512i acc = _mm512_add_epi32(acc0, acc1);
    if (q6) {
        // codes are c - 32: take 32 sc_s (sum of q1 over s) back; bsum_s is 256 times that sum,
        // which fits int16 as sc_s does
        const __m256i sums = _mm512_cvtepi32_epi16(_mm512_srai_epi32(bs, 8));
        const __m256i corr = _mm256_madd_epi16(w->sc6, sums);
        *ia = _mm512_sub_epi32(acc, _mm512_zextsi256_si512(_mm256_slli_epi32(corr, 5)));
        *mb = _mm512_setzero_si512();
    } else {
        *ia = acc;
        // one level: bsums are 256 * (sums of q1 over 16); their pairs / 256 fit int16
        const __m512i pairs = _mm512_srai_epi32(_mm512_add_epi32(bs, _mm512_srli_epi64(bs, 32)), 8);
        *mb = _mm512_castsi128_si512(_mm_madd_epi16(w->mins, _mm512_cvtepi64_epi16(pairs)));
    }
}

// Sums of 4 vectors of 16 int32 lanes, in int64 (exact whatever the lanes hold).
INL __m256i sum4_epi64(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
#define WIDEN(v) _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)))
    __m512i a = WIDEN(v0), b = WIDEN(v1), c = WIDEN(v2), d = WIDEN(v3);
#undef WIDEN
    __m512i t01 = _mm512_add_epi64(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    __m512i t23 = _mm512_add_epi64(_mm512_unpacklo_epi64(c, d), _mm512_unpackhi_epi64(c, d));
    __m512i s = _mm512_add_epi64(_mm512_shuffle_i64x2(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_i64x2(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
    s = _mm512_add_epi64(_mm512_shuffle_i64x2(s, s, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_i64x2(s, s, _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_castsi512_si256(s);
}

// Sums of 4 vectors of 4 int32 lanes whose totals fit int32.
INL __m128i sum4_epi32_x4(__m128i v0, __m128i v1, __m128i v2, __m128i v3) {
    const __m128i t01 = _mm_add_epi32(_mm_unpacklo_epi32(v0, v1), _mm_unpackhi_epi32(v0, v1));
    const __m128i t23 = _mm_add_epi32(_mm_unpacklo_epi32(v2, v3), _mm_unpackhi_epi32(v2, v3));
    return _mm_add_epi32(_mm_unpacklo_epi64(t01, t23), _mm_unpackhi_epi64(t01, t23));
}

// Sums of 4 vectors of 16 int32 lanes whose totals fit int32 (B).
INL __m128i sum4_epi32(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
    __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
    __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
    __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
    __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// R rows x T tokens (R * T <= 16); pair p = i * T + j lives in lane p % 4 of acc[p / 4]. Groups of 4
// pairs are reduced as soon as they are complete: across the rows when T = 1, per row otherwise.
INL void k_tile_impl(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, int type,
                      const int ONE) {
    const act_layout *L = &a->layout;
    const int q6 = type == PUNA_TYPE_Q6_K;
    const int64_t bytes = type == PUNA_TYPE_Q4_K ? 144 : type == PUNA_TYPE_Q5_K ? 176 : 210;
    const int64_t nb = a->cols / 256, rb = a->row_bytes, tb = L->token_bytes;
    const int P = R * T;
    __m128 acc[4];
    UNROLL for (int g = 0; g < 4; g++) acc[g] = _mm_setzero_ps();
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    for (int64_t b = 0; b < nb; b++) {
        if (prefetch) {
            const uint8_t *pf = w + PF_TILES * R * rb + b * bytes * R;
            UNROLL for (int i = 0; i < (R * (int)bytes + 63) / 64 + 1; i++) _mm_prefetch((const char *)pf + 64 * i, PF_HINT);
        }
        __m512i ia[16], mb[16];
        float dd[16], dm[16];
        UNROLL for (int i = 0; i < R; i++) {
            kblock kb;
            kcodes kc;
            if (ONE) {
                if (q6) unpack1_q6_K(w + i * rb + bytes * b, &kc);
                else unpack1_q45_K(w + i * rb + bytes * b, type == PUNA_TYPE_Q5_K, &kc);
            } else {
                if (q6) unpack_q6_K(w + i * rb + bytes * b, &kb);
                else unpack_q45_K(w + i * rb + bytes * b, type == PUNA_TYPE_Q5_K, &kb);
            }
            UNROLL for (int j = 0; j < T; j++) {
                const int p = i * T + j;
                const uint8_t *x = x0 + j * tb;
                const float dx = ((const float *)(x + L->d_off))[b];
                if (ONE) k_pair1(&kc, x, L, b, q6, &ia[p], &mb[p]);
                else k_pair(&kb, x, L, b, q6, &ia[p], &mb[p]);
                dd[p] = (ONE ? kc.d : kb.d) * dx;
                dm[p] = (ONE ? kc.dmin : kb.dmin) * dx;
                if (p % 4 == 3 || p == P - 1) {
                    const int g = p / 4, first = 4 * g;
                    const __m512i z = _mm512_setzero_si512();
                    __m512i v[4], m[4];
                    UNROLL for (int k = 0; k < 4; k++) {
                        v[k] = first + k <= p ? ia[first + k] : z;
                        m[k] = first + k <= p ? mb[first + k] : z;
                    }
                    // one level: (float)(256 A1) = 256 (float)A1, exactly
                    __m128 Af = ONE ? _mm_mul_ps(_mm_cvtepi32_ps(sum4_epi32(v[0], v[1], v[2], v[3])), _mm_set1_ps(256.0f))
                                    : _mm256_cvtepi64_ps(sum4_epi64(v[0], v[1], v[2], v[3]));
                    float ddv[4], dmv[4];
                    UNROLL for (int k = 0; k < 4; k++) {
                        ddv[k] = first + k <= p ? dd[first + k] : 0.0f;
                        dmv[k] = first + k <= p ? dm[first + k] : 0.0f;
                    }
                    acc[g] = _mm_fmadd_ps(_mm_loadu_ps(ddv), Af, acc[g]);
                    if (!q6) {
                        // one level: B = 256 B1, B1 in 4 int32 lanes per pair, and (float)B = 256 (float)B1
                        __m128 Bf = ONE ? _mm_mul_ps(_mm_cvtepi32_ps(sum4_epi32_x4(
                                                         _mm512_castsi512_si128(m[0]), _mm512_castsi512_si128(m[1]),
                                                         _mm512_castsi512_si128(m[2]), _mm512_castsi512_si128(m[3]))),
                                                     _mm_set1_ps(256.0f))
                                        : _mm_cvtepi32_ps(sum4_epi32(m[0], m[1], m[2], m[3]));
                        acc[g] = _mm_fnmadd_ps(_mm_loadu_ps(dmv), Bf, acc[g]);
                    }
                }
            }
        }
    }
    UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) {
        const int p = i * T + j;
        float lanes[4];
        _mm_storeu_ps(lanes, acc[p / 4]);
        a->y[(t + j) * a->rows + r + i] = lanes[p % 4];
    }
}

INL void q4_K_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    k_tile_impl(a, r, t, R, T, prefetch, PUNA_TYPE_Q4_K, ONE);
}
INL void q5_K_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    k_tile_impl(a, r, t, R, T, prefetch, PUNA_TYPE_Q5_K, ONE);
}
INL void q6_K_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch, const int ONE) {
    k_tile_impl(a, r, t, R, T, prefetch, PUNA_TYPE_Q6_K, ONE);
}

// ---- float weights ------------------------------------------------------------------------------
// f32 activations; 16 columns per step, one accumulator per (row, token), masked column tail.

INL __m512 load_w_f32(const uint8_t *p, int64_t c, __mmask16 m) { return _mm512_maskz_loadu_ps(m, (const float *)p + c); }
INL __m512 load_w_f16(const uint8_t *p, int64_t c, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + c));
}
INL __m512 load_w_bf16(const uint8_t *p, int64_t c, __mmask16 m) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + c));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

// Decoding streams the rows like the quantized tiles do: the rows PF_TILES tiles ahead are prefetched
// at the pace they are read (ESIZE bytes per weight).
#define FLOAT_TILE(name, LOAD, ESIZE)                                                                          \
    INL void name##_tile(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, int prefetch,     \
                         const int ONE) {                                                                      \
        (void)ONE;                                                                                             \
        const int64_t cols = a->cols, rb = a->row_bytes;                                                       \
        __m512 acc[4][4];                                                                                      \
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps(); \
        const uint8_t *w = a->w + r * rb;                                                                      \
        const float *x0 = a->x + t * cols;                                                                     \
        for (int64_t c = 0; c < cols; c += 16) {                                                               \
            __mmask16 m = cols - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (cols - c)) - 1);            \
            if (prefetch && ((c * (ESIZE)) & 63) == 0) {                                                       \
                const uint8_t *pf = w + PF_TILES * R * rb + c * (ESIZE) * R;                                   \
                UNROLL for (int i = 0; i < R; i++) _mm_prefetch((const char *)pf + 64 * i, PF_HINT);          \
            }                                                                                                  \
            __m512 xv[4];                                                                                      \
            UNROLL for (int j = 0; j < T; j++) xv[j] = _mm512_maskz_loadu_ps(m, x0 + j * cols + c);           \
            UNROLL for (int i = 0; i < R; i++) {                                                               \
                __m512 wv = LOAD(w + i * rb, c, m);                                                            \
                UNROLL for (int j = 0; j < T; j++) acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);          \
            }                                                                                                  \
        }                                                                                                      \
        UNROLL for (int i = 0; i < R; i++) UNROLL for (int j = 0; j < T; j++)                                  \
            a->y[(t + j) * a->rows + r + i] = reduce16(acc[i][j]);                                             \
    }

FLOAT_TILE(f32, load_w_f32, 4)
FLOAT_TILE(f16, load_w_f16, 2)
FLOAT_TILE(bf16, load_w_bf16, 2)

// ---- generic row drivers ----------------------------------------------------------------------
// TILE_FNS(name) expects name##_tile(a, r, t, R, T, prefetch) and defines the fixed-size tiles and
// the rows function: decode (one token) in 4-row tiles with prefetch; batches in blocks of
// BLOCK_ROWS rows x all tokens, BR x BT register tiles inside.

#define BLOCK_ROWS 64
// Up to this many tokens a call is a decode step of several sequences: 4-token tiles (`_small`).
#ifndef SMALL_BATCH
#define SMALL_BATCH 16
#endif

// A decoding chunk starts cold: the tiles' own prefetching covers from the third tile on, so the
// first PF_TILES tiles are requested up front (and the last tiles prefetch nothing past the chunk,
// which another thread may own).
static T512 void prefetch_first_tiles(const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1) {
    int64_t end = r0 + PF_TILES * DEC_R < r1 ? r0 + PF_TILES * DEC_R : r1;
    const uint8_t *p = w + r0 * row_bytes, *e = w + end * row_bytes;
    for (; p < e; p += 64) _mm_prefetch((const char *)p, PF_HINT);
}
static T512 void prefetch_rows(const qmm_args *a, int64_t r0, int64_t r1) { prefetch_first_tiles(a->w, a->row_bytes, r0, r1); }

// Tiles and rows function of one activation mode (ONE: one level); `sfx` names the variant.
// The tiles' target attributes (the avx512-vbmi tiles redefine it around their instantiation).
#define TILE_TARGET T512
#define TILE_FNS_MODE(name, sfx, BR, BT, ONE) TILE_FNS_MODE_D(name, sfx, BR, BT, ONE, 0)
#define TILE_FNS_MODE_D(name, sfx, BR, BT, ONE, ONE_ROW_OK)                                             \
    static TILE_TARGET void name##sfx##_dec4(const qmm_args *a, int64_t r) { name##_tile(a, r, 0, DEC_R, 1, 1, ONE); } \
    static TILE_TARGET void name##sfx##_dec1pf(const qmm_args *a, int64_t r) { name##_tile(a, r, 0, 1, 1, 1, ONE); } \
    static TILE_TARGET void name##sfx##_dec4_last(const qmm_args *a, int64_t r) { name##_tile(a, r, 0, DEC_R, 1, 0, ONE); } \
    static TILE_TARGET void name##sfx##_dec1(const qmm_args *a, int64_t r) { name##_tile(a, r, 0, 1, 1, 0, ONE); } \
    static TILE_TARGET void name##sfx##_full(const qmm_args *a, int64_t r, int64_t t) { name##_tile(a, r, t, BR, BT, 0, ONE); } \
    static TILE_TARGET void name##sfx##_fullpf(const qmm_args *a, int64_t r, int64_t t) { name##_tile(a, r, t, BR, BT, 1, ONE); } \
    static TILE_TARGET void name##sfx##_rowtail(const qmm_args *a, int64_t r, int64_t t) { name##_tile(a, r, t, 1, BT, 0, ONE); } \
    static TILE_TARGET void name##sfx##_tok1(const qmm_args *a, int64_t r, int64_t t) { name##_tile(a, r, t, BR, 1, 0, ONE); } \
    static TILE_TARGET void name##sfx##_one(const qmm_args *a, int64_t r, int64_t t) { name##_tile(a, r, t, 1, 1, 0, ONE); } \
    static TILE_TARGET void name##sfx##_w4(const qmm_args *a, int64_t r, int64_t t, int pf) {                  \
        if (pf) name##_tile(a, r, t, BR, 4, 1, ONE); else name##_tile(a, r, t, BR, 4, 0, ONE);       \
    }                                                                                                   \
    static TILE_TARGET void name##sfx##_w2(const qmm_args *a, int64_t r, int64_t t, int pf) {                  \
        if (pf) name##_tile(a, r, t, BR, 2, 1, ONE); else name##_tile(a, r, t, BR, 2, 0, ONE);       \
    }                                                                                                   \
    /* Small batches (decode steps of several sequences): tiles 4 tokens wide, so each block of  */   \
    /* rows is unpacked ceil(n / 4) times (8 tokens: twice instead of 3 + 3 + 1 + 1).             */   \
    static void name##sfx##_small(const qmm_args *a, int64_t r0, int64_t r1) {                      \
        for (int64_t rb = r0; rb < r1; rb += BLOCK_ROWS) {                                              \
            int64_t re = rb + BLOCK_ROWS < r1 ? rb + BLOCK_ROWS : r1;                                   \
            for (int64_t t = 0; t < a->n_tokens;) {                                                     \
                int64_t left = a->n_tokens - t;                                                         \
                int width = left >= 4 ? 4 : (int)left;                                                  \
                int64_t r = rb;                                                                         \
                for (; r + (BR) <= re; r += (BR)) {                                                     \
                    int pf = t == 0 && r + (PF_TILES + 1) * (BR) <= r1;                                 \
                    if (width == 4) name##sfx##_w4(a, r, t, pf);                                        \
                    else if (width == 3 && (BT) == 3) { if (pf) name##sfx##_fullpf(a, r, t); else name##sfx##_full(a, r, t); } \
                    else if (width >= 2) { name##sfx##_w2(a, r, t, pf); if (width == 3) name##sfx##_tok1(a, r, t + 2); } \
                    else name##sfx##_tok1(a, r, t);                                                     \
                }                                                                                       \
                for (; r < re; r++) for (int j = 0; j < width; j++) name##sfx##_one(a, r, t + j);       \
                t += width;                                                                             \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
    static void name##sfx##_rows(const qmm_args *a, int64_t r0, int64_t r1) {                        \
        if (a->n_tokens == 1) {                                                                         \
            int64_t r = r0;                                                                             \
            prefetch_rows(a, r0, r1);                                                                   \
            if ((ONE_ROW_OK) && simple_decode_one_row()) {                                              \
                for (; r + PF_TILES + 1 <= r1; r++) name##sfx##_dec1pf(a, r);                           \
                for (; r < r1; r++) name##sfx##_dec1(a, r);                                             \
                return;                                                                                 \
            }                                                                                           \
            for (; r + (PF_TILES + 1) * DEC_R <= r1; r += DEC_R) name##sfx##_dec4(a, r);                \
            for (; r + DEC_R <= r1; r += DEC_R) name##sfx##_dec4_last(a, r);                            \
            for (; r < r1; r++) name##sfx##_dec1(a, r);                                                 \
            return;                                                                                     \
        }                                                                                               \
        if (a->n_tokens <= SMALL_BATCH) { name##sfx##_small(a, r0, r1); return; }                       \
        for (int64_t rb = r0; rb < r1; rb += BLOCK_ROWS) {                                              \
            int64_t re = rb + BLOCK_ROWS < r1 ? rb + BLOCK_ROWS : r1;                                   \
            int64_t t = 0;                                                                              \
            for (; t + (BT) <= a->n_tokens; t += (BT)) {                                                \
                int64_t r = rb;                                                                         \
                /* the first pass over a block streams it from memory: prefetch ahead as decoding does */ \
                if (t == 0)                                                                             \
                    for (; r + (BR) <= re && r + (PF_TILES + 1) * (BR) <= r1; r += (BR)) name##sfx##_fullpf(a, r, t); \
                for (; r + (BR) <= re; r += (BR)) name##sfx##_full(a, r, t);                            \
                for (; r < re; r++) name##sfx##_rowtail(a, r, t);                                       \
            }                                                                                           \
            for (; t < a->n_tokens; t++) {                                                              \
                int64_t r = rb;                                                                         \
                for (; r + (BR) <= re; r += (BR)) name##sfx##_tok1(a, r, t);                            \
                for (; r < re; r++) name##sfx##_one(a, r, t);                                           \
            }                                                                                           \
        }                                                                                               \
    }

// Types without a one-level shortcut (float types take f32 activations).
#define TILE_FNS(name, BR, BT) TILE_FNS_MODE(name, , BR, BT, 0)

// Simple quants: a two-level and a one-level variant, picked by the activation layout.
#ifndef ONE_BR
#define ONE_BR 4
#endif
#ifndef ONE_BT
#define ONE_BT 3
#endif
#define SIMPLE_TILE_FNS_RT(name, BR, BT, BR1, BT1, ONE_ROW_OK)                                          \
    TILE_FNS_MODE_D(name, _l2, BR, BT, 0, ONE_ROW_OK)                                                   \
    TILE_FNS_MODE_D(name, _l1, BR1, BT1, 1, ONE_ROW_OK)                                                 \
    static void name##_rows(const qmm_args *a, int64_t r0, int64_t r1) {                              \
        if (a->layout.levels == 1) name##_l1_rows(a, r0, r1);                                           \
        else name##_l2_rows(a, r0, r1);                                                                 \
    }
#define SIMPLE_TILE_FNS(name, BR, BT) SIMPLE_TILE_FNS_RT(name, BR, BT, ONE_BR, ONE_BT, 1)

SIMPLE_TILE_FNS(q4_0, 4, 3)
SIMPLE_TILE_FNS(q4_1, 4, 3)
SIMPLE_TILE_FNS(q5_0, 4, 3)
SIMPLE_TILE_FNS(q5_1, 4, 3)
SIMPLE_TILE_FNS(q8_0, 4, 3)
SIMPLE_TILE_FNS_RT(bnb4, 4, 3, ONE_BR, ONE_BT, 0)
SIMPLE_TILE_FNS_RT(bnb8, 4, 3, ONE_BR, ONE_BT, 0)
#undef TILE_TARGET
#define TILE_TARGET T512V
SIMPLE_TILE_FNS_RT(bnb4vb, 4, 3, ONE_BR, ONE_BT, 0)
#undef TILE_TARGET
#define TILE_TARGET T512
SIMPLE_TILE_FNS_RT(q4_K, 2, 4, 2, 4, 0)
SIMPLE_TILE_FNS_RT(q5_K, 2, 4, 2, 4, 0)
SIMPLE_TILE_FNS_RT(q6_K, 2, 4, 2, 4, 0)
TILE_FNS(f32, 4, 4)
TILE_FNS(f16, 4, 4)
TILE_FNS(bf16, 4, 4)

// ---- attention rows ------------------------------------------------------------------------------
// Masked loads suppress faults, so row and head tails need no scalar code.

INL __mmask16 lanes_below(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

static T512 float attn512_dot_f32(const float *q, const uint8_t *row, int64_t first, int n) {
    const float *k = (const float *)row + first;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(k + i + 16), a1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = lanes_below(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, k + i), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static T512 void attn512_axpy_f32(float *out, float p, const uint8_t *row, int64_t first, int n) {
    const float *v = (const float *)row + first;
    const __m512 pv = _mm512_set1_ps(p);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = lanes_below(n - i);
        _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(pv, _mm512_maskz_loadu_ps(m, v + i), _mm512_maskz_loadu_ps(m, out + i)));
    }
}

static T512 float attn512_dot_f16(const float *q, const uint8_t *row, int64_t first, int n) {
    const uint16_t *k = (const uint16_t *)row + first;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + i))), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + i + 16))), a1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = lanes_below(n - i);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, k + i)), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

static T512 void attn512_axpy_f16(float *out, float p, const uint8_t *row, int64_t first, int n) {
    const uint16_t *v = (const uint16_t *)row + first;
    const __m512 pv = _mm512_set1_ps(p);
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = lanes_below(n - i);
        __m512 vv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, v + i));
        _mm512_mask_storeu_ps(out + i, m, _mm512_fmadd_ps(pv, vv, _mm512_maskz_loadu_ps(m, out + i)));
    }
}

// Weighted sums of value rows, 128 columns at a time in 8 register accumulators; per element the
// same fma sequence as the axpy's above.
#define ATTN_WSUM(name, LOADV)                                                                                   \
    static T512 void name(float *out, const float *p, const uint8_t *v, int64_t row_bytes, int64_t first, int n, \
                          int n_pos) {                                                                           \
        for (int c0 = 0; c0 < n; c0 += 128) {                                                                    \
            __mmask16 m[8];                                                                                      \
            __m512 acc[8];                                                                                       \
            UNROLL for (int c = 0; c < 8; c++) {                                                                 \
                m[c] = lanes_below(n - c0 - 16 * c);                                                             \
                acc[c] = _mm512_setzero_ps();                                                                    \
            }                                                                                                    \
            for (int j = 0; j < n_pos; j++) {                                                                    \
                const uint8_t *row = v + j * row_bytes;                                                          \
                const __m512 pv = _mm512_set1_ps(p[j]);                                                          \
                UNROLL for (int c = 0; c < 8; c++)                                                               \
                    if (m[c]) acc[c] = _mm512_fmadd_ps(pv, LOADV(row, first + c0 + 16 * c, m[c]), acc[c]);      \
            }                                                                                                    \
            UNROLL for (int c = 0; c < 8; c++) if (m[c]) _mm512_mask_storeu_ps(out + c0 + 16 * c, m[c], acc[c]);  \
        }                                                                                                        \
    }
ATTN_WSUM(attn512_wsum_f32, load_w_f32)
ATTN_WSUM(attn512_wsum_f16, load_w_f16)

// q8_0: one block at a time; lanes of the block outside [first, first + n) are masked off, and the
// q / out addresses of masked lanes (which may lie before the buffer) are never touched.
INL void q8_block(const uint8_t *row, int64_t b, __m512 *lo, __m512 *hi, float *d) {
    const puna_block_q8_0 *blk = (const puna_block_q8_0 *)row + b;
    *d = _cvtsh_ss(blk->d);
    __m128i q0 = _mm_loadu_si128((const __m128i *)blk->qs), q1 = _mm_loadu_si128((const __m128i *)(blk->qs + 16));
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1));
}

static T512 float attn512_dot_q8_0(const float *q, const uint8_t *row, int64_t first, int n) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        int64_t lo_first = first - b * 32, lo_end = first + n - b * 32;  // valid lanes [lo_first, lo_end)
        __mmask16 m0 = lanes_below(lo_end) & (__mmask16)~lanes_below(lo_first);
        __mmask16 m1 = lanes_below(lo_end - 16) & (__mmask16)~lanes_below(lo_first - 16);
        const float *qb = (const float *)((uintptr_t)q + (uintptr_t)((b * 32 - first) * 4));
        __m512 k0, k1;
        float d;
        q8_block(row, b, &k0, &k1, &d);
        __m512 t = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, qb), k0);
        t = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, qb + 16), k1, t);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(d), t, acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static T512 void attn512_axpy_q8_0(float *out, float p, const uint8_t *row, int64_t first, int n) {
    for (int64_t b = first / 32; b * 32 < first + n; b++) {
        int64_t lo_first = first - b * 32, lo_end = first + n - b * 32;
        __mmask16 m0 = lanes_below(lo_end) & (__mmask16)~lanes_below(lo_first);
        __mmask16 m1 = lanes_below(lo_end - 16) & (__mmask16)~lanes_below(lo_first - 16);
        float *ob = (float *)((uintptr_t)out + (uintptr_t)((b * 32 - first) * 4));
        __m512 k0, k1;
        float d;
        q8_block(row, b, &k0, &k1, &d);
        const __m512 s = _mm512_set1_ps(p * d);
        _mm512_mask_storeu_ps(ob, m0, _mm512_fmadd_ps(s, k0, _mm512_maskz_loadu_ps(m0, ob)));
        _mm512_mask_storeu_ps(ob + 16, m1, _mm512_fmadd_ps(s, k1, _mm512_maskz_loadu_ps(m1, ob + 16)));
    }
}

int puna_attn_ops_avx512(int kv_type, attn_ops *out) {
    if (kv_type == PUNA_TYPE_F32) { out->dot = attn512_dot_f32; out->axpy = attn512_axpy_f32; out->wsum = attn512_wsum_f32; }
    else if (kv_type == PUNA_TYPE_F16) { out->dot = attn512_dot_f16; out->axpy = attn512_axpy_f16; out->wsum = attn512_wsum_f16; }
    else if (kv_type == PUNA_TYPE_Q8_0) { out->dot = attn512_dot_q8_0; out->axpy = attn512_axpy_q8_0; }
    else return 0;
    return 1;
}

int puna_kernels_avx512_get(int type, int vbmi, qmm_kernel *out) {
    qmm_kernel k = {0};
    k.quantize = quantize_avx512;
    k.act_format = ACT_Q8_32;
    k.row_tile = 4;
    switch (type) {
    case PUNA_TYPE_Q4_0: k.rows = q4_0_rows; k.aux = AUX_NEG_SUM8; break;
    case PUNA_TYPE_Q4_1: k.rows = q4_1_rows; k.aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q5_0: k.rows = q5_0_rows; k.aux = AUX_NEG_SUM16; break;
    case PUNA_TYPE_Q5_1: k.rows = q5_1_rows; k.aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q8_0: k.rows = q8_0_rows; break;
    case PUNA_TYPE_Q4_K: k.rows = q4_K_rows; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q5_K: k.rows = q5_K_rows; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q6_K: k.rows = q6_K_rows; k.act_format = ACT_Q8_256; break;
    case PUNA_TYPE_F32: k.rows = f32_rows; k.quantize = NULL; break;
    case PUNA_TYPE_F16: k.rows = f16_rows; k.quantize = NULL; break;
    case PUNA_TYPE_BF16: k.rows = bf16_rows; k.quantize = NULL; break;
    case PUNA_TYPE_BNB4: k.rows = vbmi ? bnb4v_rows : bnb4_rows; k.aux = AUX_NEG_SUM128; break;
    case PUNA_TYPE_BNB_INT8: k.rows = bnb8_rows; k.aux = AUX_NEG_SUM128; break;
    default: break;
    }
    *out = k;
    return 1;
}

#else
int puna_kernels_avx512_get(int type, int vbmi, qmm_kernel *out) {
    (void)type;
    (void)vbmi;
    (void)out;
    return 0;
}
int puna_attn_ops_avx512(int kv_type, attn_ops *out) {
    (void)kv_type;
    (void)out;
    return 0;
}
#endif
