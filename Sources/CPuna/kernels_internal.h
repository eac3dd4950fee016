// Private interface between the matmul driver (ops.c) and the per-ISA kernel files.
//
// Quantized weights are multiplied against activations that the driver quantizes once per call to
// 8-bit blocks. Every ISA must produce the same bits as the scalar int8 reference
// (kernels_scalar.c), so the arithmetic is pinned down here, not left to each kernel.
//
// Activations are quantized to one or two 8-bit levels (act_layout.levels, chosen per process with
// puna_kernels_set_activation_levels). One level is what llama.cpp does and costs up to a few % of
// max|logit|; two levels carry ~16-bit precision for a second integer dot product (no extra float
// work), which the prompt-sized matmuls feel and decoding mostly does not:
//   per block (32 values, or 256 for the K-quant format): amax = max |x_i|, d = amax / 127,
//   id = 127 / amax (0 when amax = 0); q1_i = clamp(rint(x_i * id)), and with the exact scaling
//   id256 = id * 256: q2_i = clamp(rint(x_i * id256) - 256 * q1_i), clamp to [-127, 127], rint
//   rounding half to even; with one level q2_i = 0. The block's value is x_i ~ (d / 256) * X_i with
//   X_i = 256 q1_i + q2_i, and d / 256 is what is stored (as "dx"). Every kernel computes the same
//   integers either way (q2 is stored, as zeros, in both), so a kernel may skip the q2 products
//   when levels == 1 and still give the same bits.
//
// Format ACT_Q8_32 (for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), per token, in groups of 4 blocks of 256 bytes:
//   [q1 low halves | q1 high halves | q2 low halves | q2 high halves], 64 bytes each, where the low
//   halves part holds byte 16k + i = q[block 4g+k][i] and the high halves part [16 + i] (i < 16), so
//   one 64-byte load holds a half of 4 blocks; a last partial group is zero-padded (dx = 0 too).
//   dx is stored once per lane: dx[16g + 4k + j] = dx of block 4g+k, so one 64-byte load gives the
//   scales of a group's 16 lanes.
// "Lane" j (0..3) of a block is its weights {4j..4j+3} and {16+4j..16+4j+3}: what one int32 lane of
//   a 4-byte dot product (vpdpbusd, sdot) sums over the low and then the high half.
// Simple-quant dot, per (row, token): p[b][j] = exact integer sum over lane j of w_code * X, where
//   w_code is the weight's signed code (Q4_0: q - 8, Q5_0: q - 16, Q8_0: q; Q4_1/Q5_1: q unsigned)
//   (|p| < 2^31; (float)p is the usual round to nearest).
//   16 f32 accumulators acc[4 * (b % 4) + j], starting at +0, in block order:
//     acc = fma(dw_b * dx_b, (float)p[b][j], acc)                   (dw: the block's f16 scale)
//     with one level instead acc = fma(s_b, (float)(p[b][j] / 256), acc), s_b the rounded product
//     of the exact 256 dw_b and dx_b (p is then a multiple of 256; 256 dw and 256 dx are exact, so
//     (256 dw) * dx and dw * (256 dx) are both s_b), which saves a shift per step
//     Q4_1/Q5_1 then: acc = fma(mw_b * dx_b, (float)xs[b][j], acc)   (mw: f16 min, xs: lane sum of X)
//   y = reduce16(acc): h[i] = acc[i] + acc[i + 8], then i + 4, then i + 2, then i + 1.
//
// Format ACT_Q8_256 (for Q4_K, Q5_K, Q6_K), per super-block of 256: ACT256_STRIDE bytes
//   [q1 (256 bytes) | q2 (256 bytes) | X as int16 (512 bytes)] in natural order (one family uses
//   the bytes, another the int16 values), dx, and int32 bsums[16] (sums of X over each 16 values).
// K-quant dot, per (row, token), one f32 accumulator starting at +0, in super-block order:
//   Q4_K/Q5_K: A = sum_s sc_s * sum_{i in s} c_i * X_i (int64), B = sum_s m_s * sum_{i in s} X_i
//     (int32), over the 8 sub-blocks s of 32 with 6-bit scales sc and mins m and codes c;
//     acc = fma(d * dx, (float)A, acc) then acc = fma(-(dmin * dx), (float)B, acc).
//   Q6_K: A = sum_s sc_s * sum_{i in s} (c_i - 32) * X_i over the 16 sub-blocks of 16 (int64);
//     acc = fma(d * dx, (float)A, acc).
// Every integer is exact, so integer work may run in any order and be split as 256 * (q1 part) +
// (q2 part) however an ISA likes.
//
// bitsandbytes weights (puna_bnb.h; the matmul's `w` is the descriptor, row_bytes is 0), on ACT_Q8_32
// activations. Activation block k of row r covers elements r * cols + 32k .. + 31 (cols is a multiple of 32).
//   BNB4 (blocksize a multiple of 32, so each activation block lies in one bnb block b):
//     the 16 codes map to int8: m = max_k |quant_map[k]|, T[k] = clamp(rint(quant_map[k] * (127 / m)),
//     -127, 127) with 127 / m rounded to f32 first, and mscale = m / 127 (f32); m == 0 gives T = 0,
//     mscale = 0 (quant_map must be finite). p[k][j] = exact sum over lane j of T[code_e] * X_e.
//     absmax_b exactly as puna_bnb4_dequantize_rows computes it (bnb4_absmax below).
//     acc[4 * (k % 4) + j] = fma(absmax_b * dx_k, (float)p[k][j], acc)
//       one level: fma(absmax_b * (256 dx_k), (float)(p[k][j] / 256), acc)   (256 dx is exact)
//     y = reduce16(acc) * mscale.
//   BNB_INT8: p[k][j] = exact sum over lane j of weight_e * X_e (any int8, -128 included);
//     acc[4 * (k % 4) + j] = fma(dx_k, (float)p[k][j], acc)   (one level: fma(256 dx_k, (float)(p / 256), acc))
//     y = reduce16(acc) * (row_scale[r] * (1.0f / 127.0f)).
//   Element e's code sits in the high nibble of packed[e / 2] when e is even, so a run of 16 packed
//   bytes holds 16 even elements (high nibbles) and 16 odd ones (low nibbles): kernels look both up
//   and interleave them (zip / unpack) back into element order. Families whose dot product wants
//   unsigned weights (vpdpbusd) look up T + 128 (or flip int8 weights' sign bit) and seed the lanes
//   with AUX_NEG_SUM128 = -128 * xs; the sums are exact either way.
//
// Float weights (F32, F16, BF16) use f32 activations as they are; those kernels are only required
// to agree with the reference within float rounding, but each one computes a (row, token) dot the
// same way whatever n_tokens or the split, so batched and single-token results are bit-identical.
#ifndef PUNA_KERNELS_INTERNAL_H
#define PUNA_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "puna_quants.h"
#include "puna_bnb.h"

enum act_format { ACT_F32 = 0, ACT_Q8_32 = 1, ACT_Q8_256 = 2 };
#define ACT256_STRIDE 1024  // bytes per super-block in the ACT_Q8_256 q region
#define ACT256_X16 512      // offset of the int16 X values within it

// What a quantized token row looks like in memory (see puna_act_layout in ops.c). All offsets and
// token_bytes are multiples of 64, so every token row starts cache-line aligned.
typedef struct {
    int format;
    int levels;           // 1: q2 is all zero (kernels may skip it); 2: full two-level values
    int64_t n_blocks;     // ACT_Q8_32: blocks of 32; ACT_Q8_256: super-blocks
    int64_t n_groups;     // ACT_Q8_32: groups of 4 blocks (padded); ACT_Q8_256: = n_blocks
    int64_t qs_off;       // int8 q1 and q2 (ACT_Q8_32: 256 bytes per group; ACT_Q8_256: 512 per super-block)
    int64_t d_off;        // f32 dx (ACT_Q8_32: 16 per group, one per lane; ACT_Q8_256: one per super-block)
    int64_t aux_off;      // ACT_Q8_32: 16 x 32-bit per group, see act_aux; ACT_Q8_256: int32 bsums[16] per super-block
    int64_t token_bytes;
} act_layout;

// ACT_Q8_32 aux words, per group of 4 blocks, lane 4k + j = block 4g+k, lane j, xs = lane sum of X:
//   AUX_NEG_SUM8 / AUX_NEG_SUM16: int32 -8 * xs / -16 * xs (the code offsets of Q4_0 / Q5_0);
//   AUX_SUM_F32: (float)xs (the min terms of Q4_1 / Q5_1); AUX_NONE: not written.
//   AUX_NEG_SUM128: int32 -128 * xs (bitsandbytes weights looked up / stored as unsigned code + 128).
enum act_aux { AUX_NONE = 0, AUX_NEG_SUM8 = 1, AUX_NEG_SUM16 = 2, AUX_SUM_F32 = 3, AUX_NEG_SUM128 = 4 };

// One matmul as the kernels see it: y[t][r] for t < n_tokens and the rows a call is given.
typedef struct {
    const uint8_t *w;          // row r at w + r * row_bytes
    int64_t row_bytes, rows, cols;
    const uint8_t *act;        // quantized activations: token t at act + t * layout.token_bytes
    act_layout layout;
    const float *x;            // f32 activations [n_tokens][cols] (float kernels)
    int64_t n_tokens;
    float *y;                  // [n_tokens][rows]
} qmm_args;

// Fills y for rows [r0, r1) and every token. Must not depend on r0/r1 for a given row.
typedef void (*qmm_rows_fn)(const qmm_args *a, int64_t r0, int64_t r1);
// Quantizes tokens [t0, t1) of x ([n][cols]) into act; aux selects the ACT_Q8_32 aux words.
typedef void (*act_quantize_fn)(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                                int64_t t0, int64_t t1);

// A kernel family's entry for one weight type; rows == NULL: not provided.
typedef struct {
    qmm_rows_fn rows;
    act_quantize_fn quantize;  // NULL for float kernels
    int act_format;
    int aux;
    int64_t row_tile;          // rows per chunk must be a multiple of this (alignment of work splits)
} qmm_kernel;

// Kernel families. Each fills `out` for the types it serves and returns 1, or returns 0 when it
// is not compiled for this target. CPU checks happen in ops.c.
int puna_kernels_scalar_get(int type, qmm_kernel *out);
int puna_kernels_avx2_get(int type, int vnni, qmm_kernel *out);
int puna_kernels_avx512_get(int type, int vbmi, qmm_kernel *out);
int puna_kernels_neon_get(int type, qmm_kernel *out);
int puna_kernels_dotprod_get(int type, qmm_kernel *out);
int puna_kernels_i8mm_get(int type, qmm_kernel *out);

// A 64-byte aligned buffer owned by the pool, shared by all threads, for the quantized activations;
// grows on demand (call it before puna_pool_run, never from a task). NULL when memory runs out.
struct puna_pool;
void *puna_pool_buffer(struct puna_pool *pool, size_t bytes);

// Attention primitives over one row of a KV cache of kv_type (f32, f16 or q8_0), elements
// [first, first + n) of the row (q8_0: blocks of 32 along the whole row, so a head may start
// inside a block). Families provide faster versions; results agree with the scalar ones within f32
// rounding, and each family's are fixed by the source (no dependence on threads or batch).
typedef float (*attn_dot_fn)(const float *q, const uint8_t *row, int64_t first, int n);
typedef void (*attn_axpy_fn)(float *out, float p, const uint8_t *row, int64_t first, int n);
// Optional: out[0, n) = sum over positions j < n_pos of p[j] * row_j[first, first + n), rows
// row_bytes apart from v, with the same per-element sequence of fmas as n_pos axpy calls on a zeroed
// out (so the same bits), but with out held in registers.
typedef void (*attn_wsum_fn)(float *out, const float *p, const uint8_t *v, int64_t row_bytes, int64_t first, int n,
                             int n_pos);
typedef struct { attn_dot_fn dot; attn_axpy_fn axpy; attn_wsum_fn wsum; } attn_ops;
// Fill `out` for kv_type and return 1, or return 0 when not compiled for this target.
int puna_attn_ops_avx512(int kv_type, attn_ops *out);
int puna_attn_ops_avx2(int kv_type, attn_ops *out);
int puna_attn_ops_neon(int kv_type, attn_ops *out);

// Scalar activation quantizer: the definition every SIMD quantizer must match byte for byte.
void puna_act_quantize_scalar(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                              int64_t t0, int64_t t1);

// ---- helpers shared by the kernel files ---------------------------------------------------------

// IEEE half to float without branches on the common path: shifting the half's exponent and
// mantissa into float position and scaling by 2^112 rebiases the exponent, and maps half
// subnormals exactly onto float normals. Only inf/nan need the separate case.
static inline float kq_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, bits;
    if ((h & 0x7c00) == 0x7c00) {
        bits = sign | 0x7f800000u | ((uint32_t)(h & 0x3ff) << 13);
    } else {
        uint32_t shifted = (uint32_t)(h & 0x7fff) << 13;
        float f;
        memcpy(&f, &shifted, 4);
        f *= 0x1p112f;
        memcpy(&bits, &f, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

static inline uint16_t kq_load16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t kq_load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K super-block.
static inline void kq_scale_min(const uint8_t *packed, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = packed[j] & 63;
        *min = packed[j + 4] & 63;
    } else {
        *scale = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
        *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
    }
}

// Canonical final sum of the 16 simple-quant accumulators.
static inline float kq_reduce16(const float acc[16]) {
    float h8[8], h4[4];
    for (int i = 0; i < 8; i++) h8[i] = acc[i] + acc[i + 8];
    for (int i = 0; i < 4; i++) h4[i] = h8[i] + h8[i + 4];
    return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

// ---- bitsandbytes helpers (the definitions above; shared by bnb.c and every family) -------------

// An f32 value the compiler must treat as opaque, so a product is rounded before the next add
// (no contraction into an fma, whatever -ffp-contract says: GCC defaults to "fast").
static inline float bnb_rounded(float v) {
#if defined(__GNUC__) && defined(__x86_64__)
    __asm__("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
    __asm__("" : "+w"(v));
#else
    volatile float t = v;
    v = t;
#endif
    return v;
}

// log2(v) when v is a power of two (> 0), else -1.
static inline int bnb_log2(int64_t v) {
    if (v <= 0 || (v & (v - 1)) != 0) return -1;
    return __builtin_ctzll((unsigned long long)v);
}

// What a kernel needs of a 4-bit descriptor: the int8 code table (T, and T + 128 for unsigned
// dot products), mscale, and shifts replacing divisions where the block sizes are powers of two.
typedef struct {
    const puna_bnb4_weight *w;
    int8_t T[16];
    uint8_t U[16];
    float mscale;
    int blk_shift;     // log2(blocksize) or -1
    int nest_shift;    // log2(nested_blocksize) or -1
} bnb4_ctx;

static inline void bnb4_ctx_init(bnb4_ctx *c, const puna_bnb4_weight *w) {
    c->w = w;
    float m = 0;
    for (int k = 0; k < 16; k++) {
        float a = w->quant_map[k] < 0 ? -w->quant_map[k] : w->quant_map[k];
        if (a > m) m = a;
    }
    float inv = m > 0 ? 127.0f / m : 0.0f;
    for (int k = 0; k < 16; k++) {
        float t = m > 0 ? __builtin_rintf(w->quant_map[k] * inv) : 0.0f;
        int v = t < -127.0f ? -127 : t > 127.0f ? 127 : (int)t;
        c->T[k] = (int8_t)v;
        c->U[k] = (uint8_t)(v + 128);
    }
    c->mscale = m > 0 ? m / 127.0f : 0.0f;
    c->blk_shift = bnb_log2(w->blocksize);
    c->nest_shift = w->absmax_codes ? bnb_log2(w->nested_blocksize) : -1;
}

// absmax of bnb block b, as bitsandbytes' dequantize_4bit rounds it.
static inline float bnb4_absmax(const bnb4_ctx *c, int64_t b) {
    const puna_bnb4_weight *w = c->w;
    if (!w->absmax_codes) return w->absmax[b];
    int64_t n = c->nest_shift >= 0 ? b >> c->nest_shift : b / w->nested_blocksize;
    float v = bnb_rounded(w->nested_quant_map[w->absmax_codes[b]] * w->nested_absmax[n]);
    return v + w->nested_offset;
}

// The bnb block holding element e.
static inline int64_t bnb4_block_of(const bnb4_ctx *c, int64_t e) {
    return c->blk_shift >= 0 ? e >> c->blk_shift : e / c->w->blocksize;
}

#endif
