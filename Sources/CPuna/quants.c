// The type table and the scalar reference codecs of every GGML weight format Puna reads or writes.
// These are the bit-exact references the fast kernels are tested against:
// - every decoder reproduces gguf-py's `dequantize` bit for bit (same f32 operations in the same order);
// - the f16/bf16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 encoders reproduce gguf-py's `quantize` byte for byte;
// - the Q4_K/Q5_K/Q6_K encoders run the same scale search as llama.cpp's reference quantizer
//   (gguf-py has none), so their round-trip error is llama.cpp's.
// Encoders expect finite input; non-finite intermediate values become code 0, as numpy's casts do on x86.
#include "puna_quants.h"

#include <math.h>
#include <string.h>

// Bit-exactness needs a*b+c rounded twice, as numpy computes it. A fused multiply-add rounds once, and
// GCC fuses across statements by default on aarch64, so contraction is switched off for this file.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

// ---------------------------------------------------------------------------------------------
// f16 / bf16 scalars

float puna_f16_to_f32(puna_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf / nan, payload kept as numpy does
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal half: normalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

puna_f16 puna_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) {  // nan: keep the top payload bits (numpy's rule), never let it turn into inf
        uint32_t payload = (abs >> 13) & 0x3ff;
        return (puna_f16)(sign | 0x7c00 | (payload ? payload : 1));
    }
    if (abs >= 0x477ff000u) return (puna_f16)(sign | 0x7c00);  // inf, or rounds to >= 65520: inf
    if (abs < 0x38800000u) {  // result is subnormal (or zero): round at the fixed 2^-24 step
        if (abs <= 0x33000000u) return (puna_f16)sign;  // <= 2^-25 rounds to zero (the tie goes to even 0)
        uint32_t man = (abs & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(abs >> 23);  // value / 2^-24 = man * 2^(e - 126), e < 113
        uint32_t half_ulp = 1u << (shift - 1), q = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half_ulp || (rem == half_ulp && (q & 1))) q++;
        return (puna_f16)(sign | q);
    }
    uint32_t q = (abs - 0x38000000u) >> 13, rem = abs & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (puna_f16)(sign | q);
}

float puna_bf16_to_f32(puna_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

puna_bf16 puna_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (puna_bf16)((x >> 16) | 64);  // quiet nan
    return (puna_bf16)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

// ---------------------------------------------------------------------------------------------
// Rounding helpers, each matching one numpy idiom or one llama.cpp idiom exactly.

// numpy's float -> uint8 cast after np.trunc. Codec values lie in [0, 32]; a non-finite one
// (a scale whose inverse overflowed) becomes 0, which is what numpy's cast yields on x86.
static inline uint8_t trunc_to_u8(float v) {
    return (v > -1.0f && v < 256.0f) ? (uint8_t)(int)v : 0;
}

// gguf-py's np_roundf (half away from zero) followed by the cast to int8; codec values lie in ±128.
static inline int8_t round_away_to_i8(float v) {
    float a = fabsf(v);
    if (!(a < 256.0f)) return 0;
    int whole = (int)a;
    int r = whole + ((a - (float)whole) >= 0.5f);  // a - whole is exact, so this is floor(2 * frac)
    return (int8_t)(v < 0 ? -r : r);
}

// Nearest integer, ties to even, for |v| < 2^22: adding 1.5 * 2^23 pushes the fraction out of the
// mantissa, which then holds the integer offset by 2^22. The K-quant search depends on this tie rule.
static inline int nearest_even_int(float v) {
    float shifted = v + 12582912.0f;
    int32_t bits;
    memcpy(&bits, &shifted, 4);
    return (bits & 0x007fffff) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void store_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

// ---------------------------------------------------------------------------------------------
// Plain floats

static void decode_f32(const void *blocks, float *out, int64_t n) { memcpy(out, blocks, (size_t)n * sizeof(float)); }
static void encode_f32(const float *in, void *blocks, int64_t n) { memcpy(blocks, in, (size_t)n * sizeof(float)); }

static void decode_f16(const void *blocks, float *out, int64_t n) {
    const puna_f16 *h = blocks;
    for (int64_t i = 0; i < n; i++) out[i] = puna_f16_to_f32(h[i]);
}

static void encode_f16(const float *in, void *blocks, int64_t n) {
    puna_f16 *h = blocks;
    for (int64_t i = 0; i < n; i++) h[i] = puna_f32_to_f16(in[i]);
}

static void decode_bf16(const void *blocks, float *out, int64_t n) {
    const puna_bf16 *h = blocks;
    for (int64_t i = 0; i < n; i++) out[i] = puna_bf16_to_f32(h[i]);
}

static void encode_bf16(const float *in, void *blocks, int64_t n) {
    puna_bf16 *h = blocks;
    for (int64_t i = 0; i < n; i++) h[i] = puna_f32_to_bf16(in[i]);
}

// ---------------------------------------------------------------------------------------------
// Blocks of 32. The encoders follow gguf-py's float32 arithmetic step by step.

static void decode_q8_0(const void *blocks, float *out, int64_t n) {
    const puna_block_q8_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, out += PUNA_QK) {
        float d = puna_f16_to_f32(b[ib].d);
        for (int j = 0; j < PUNA_QK; j++) out[j] = (float)b[ib].qs[j] * d;
    }
}

static void encode_q8_0(const float *in, void *blocks, int64_t n) {
    puna_block_q8_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, in += PUNA_QK) {
        float amax = 0.0f;
        for (int j = 0; j < PUNA_QK; j++) amax = fabsf(in[j]) > amax ? fabsf(in[j]) : amax;
        float d = amax / 127.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        for (int j = 0; j < PUNA_QK; j++) b[ib].qs[j] = round_away_to_i8(in[j] * id);
        b[ib].d = puna_f32_to_f16(d);
    }
}

// The signed value of largest magnitude, the first one on ties (numpy's argmax of abs).
static inline float signed_absmax(const float *x, int n) {
    float max = x[0], amax = fabsf(x[0]);
    for (int j = 1; j < n; j++) {
        if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
    }
    return max;
}

static inline void min_max(const float *x, int n, float *min, float *max) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

static void decode_q4_0(const void *blocks, float *out, int64_t n) {
    const puna_block_q4_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, out += PUNA_QK) {
        float d = puna_f16_to_f32(b[ib].d);
        for (int j = 0; j < PUNA_QK / 2; j++) {
            out[j] = d * (float)((b[ib].qs[j] & 0x0f) - 8);
            out[j + PUNA_QK / 2] = d * (float)((b[ib].qs[j] >> 4) - 8);
        }
    }
}

static void encode_q4_0(const float *in, void *blocks, int64_t n) {
    puna_block_q4_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, in += PUNA_QK) {
        // d is negative max / 8 so the extreme value lands on code 0 (= -8) and gains the spare level.
        float d = signed_absmax(in, PUNA_QK) / -8.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        uint8_t q[PUNA_QK];
        for (int j = 0; j < PUNA_QK; j++) {
            uint8_t v = trunc_to_u8(in[j] * id + 8.5f);
            q[j] = v > 15 ? 15 : v;
        }
        for (int j = 0; j < PUNA_QK / 2; j++) b[ib].qs[j] = (uint8_t)(q[j] | (q[j + PUNA_QK / 2] << 4));
        b[ib].d = puna_f32_to_f16(d);
    }
}

static void decode_q4_1(const void *blocks, float *out, int64_t n) {
    const puna_block_q4_1 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, out += PUNA_QK) {
        float d = puna_f16_to_f32(b[ib].d), m = puna_f16_to_f32(b[ib].m);
        for (int j = 0; j < PUNA_QK / 2; j++) {
            out[j] = d * (float)(b[ib].qs[j] & 0x0f) + m;
            out[j + PUNA_QK / 2] = d * (float)(b[ib].qs[j] >> 4) + m;
        }
    }
}

static void encode_q4_1(const float *in, void *blocks, int64_t n) {
    puna_block_q4_1 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, in += PUNA_QK) {
        float min, max;
        min_max(in, PUNA_QK, &min, &max);
        float d = (max - min) / 15.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        uint8_t q[PUNA_QK];
        for (int j = 0; j < PUNA_QK; j++) {
            uint8_t v = trunc_to_u8((in[j] - min) * id + 0.5f);
            q[j] = v > 15 ? 15 : v;
        }
        for (int j = 0; j < PUNA_QK / 2; j++) b[ib].qs[j] = (uint8_t)(q[j] | (q[j + PUNA_QK / 2] << 4));
        b[ib].d = puna_f32_to_f16(d);
        b[ib].m = puna_f32_to_f16(min);
    }
}

// Q5 codes: low nibbles packed as in Q4, bit 4 of weight i is bit i of the little-endian qh word.
static inline int q5_code(const uint8_t *qs, uint32_t qh, int j) {
    int low = j < PUNA_QK / 2 ? (qs[j] & 0x0f) : (qs[j - PUNA_QK / 2] >> 4);
    return low | (int)(((qh >> j) & 1) << 4);
}

static inline void pack_q5(const uint8_t q[PUNA_QK], uint8_t qs[PUNA_QK / 2], uint8_t qh[4]) {
    uint32_t high = 0;
    for (int j = 0; j < PUNA_QK; j++) high |= (uint32_t)(q[j] >> 4) << j;
    for (int j = 0; j < PUNA_QK / 2; j++) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + PUNA_QK / 2] & 0x0f) << 4));
    store_le32(qh, high);
}

static void decode_q5_0(const void *blocks, float *out, int64_t n) {
    const puna_block_q5_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, out += PUNA_QK) {
        float d = puna_f16_to_f32(b[ib].d);
        uint32_t qh = load_le32(b[ib].qh);
        for (int j = 0; j < PUNA_QK; j++) out[j] = d * (float)(q5_code(b[ib].qs, qh, j) - 16);
    }
}

static void encode_q5_0(const float *in, void *blocks, int64_t n) {
    puna_block_q5_0 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, in += PUNA_QK) {
        float d = signed_absmax(in, PUNA_QK) / -16.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        uint8_t q[PUNA_QK];
        for (int j = 0; j < PUNA_QK; j++) {
            uint8_t v = trunc_to_u8(in[j] * id + 16.5f);
            q[j] = v > 31 ? 31 : v;
        }
        pack_q5(q, b[ib].qs, b[ib].qh);
        b[ib].d = puna_f32_to_f16(d);
    }
}

static void decode_q5_1(const void *blocks, float *out, int64_t n) {
    const puna_block_q5_1 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, out += PUNA_QK) {
        float d = puna_f16_to_f32(b[ib].d), m = puna_f16_to_f32(b[ib].m);
        uint32_t qh = load_le32(b[ib].qh);
        for (int j = 0; j < PUNA_QK; j++) out[j] = d * (float)q5_code(b[ib].qs, qh, j) + m;
    }
}

static void encode_q5_1(const float *in, void *blocks, int64_t n) {
    puna_block_q5_1 *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK; ib++, in += PUNA_QK) {
        float min, max;
        min_max(in, PUNA_QK, &min, &max);
        float d = (max - min) / 31.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        uint8_t q[PUNA_QK];
        for (int j = 0; j < PUNA_QK; j++) {
            uint8_t v = trunc_to_u8((in[j] - min) * id + 0.5f);
            q[j] = v > 31 ? 31 : v;
        }
        pack_q5(q, b[ib].qs, b[ib].qh);
        b[ib].d = puna_f32_to_f16(d);
        b[ib].m = puna_f32_to_f16(min);
    }
}

// ---------------------------------------------------------------------------------------------
// K-quant decoders (super-blocks of 256). Each sub-block first forms its f32 scale (and min) as
// d * sc, then every weight is scale * q (- min), the order gguf-py uses.

// Q2_K and Q3_K have no struct in puna_quants.h (Puna only decodes them); their byte layout:
enum {
    Q2K_SCALES = 0, Q2K_QS = 16, Q2K_D = 80, Q2K_DMIN = 82,                // 84 bytes
    Q3K_HMASK = 0, Q3K_QS = 32, Q3K_SCALES = 96, Q3K_D = 108,              // 110 bytes
};

static inline puna_f16 load_f16(const uint8_t *p) { return (puna_f16)(p[0] | (p[1] << 8)); }

// Within each 128 weights of Q2_K/Q3_K, weight 32 * s + l sits in bits 2s..2s+1 of byte l of a 32-byte run.
static inline int two_bit_code(const uint8_t *qs, int i) {
    return (qs[(i / 128) * 32 + i % 32] >> (2 * ((i % 128) / 32))) & 3;
}

static void decode_q2_K(const void *blocks, float *out, int64_t n) {
    const uint8_t *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, b += 84, out += PUNA_QK_K) {
        float d = puna_f16_to_f32(load_f16(b + Q2K_D)), dmin = puna_f16_to_f32(load_f16(b + Q2K_DMIN));
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            uint8_t sc = b[Q2K_SCALES + sub];
            float scale = d * (float)(sc & 0x0f), min = dmin * (float)(sc >> 4);
            for (int l = 0; l < 16; l++) out[16 * sub + l] = scale * (float)two_bit_code(b + Q2K_QS, 16 * sub + l) - min;
        }
    }
}

// Q3_K: 16 signed 6-bit scales (stored + 32) as 4 low bits in bytes 0..7 (two per byte) and 2 high
// bits in bytes 8..11; the third bit of weight 32 * j + l is bit j of hmask[l], and a clear bit means -4.
static void decode_q3_K(const void *blocks, float *out, int64_t n) {
    const uint8_t *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, b += 110, out += PUNA_QK_K) {
        float d = puna_f16_to_f32(load_f16(b + Q3K_D));
        const uint8_t *packed = b + Q3K_SCALES;
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            int low = (packed[sub % 8] >> (4 * (sub / 8))) & 0x0f;
            int high = (packed[8 + sub % 4] >> (2 * (sub / 4))) & 3;
            float scale = d * (float)((low | (high << 4)) - 32);
            for (int l = 0; l < 16; l++) {
                int i = 16 * sub + l;
                int q = two_bit_code(b + Q3K_QS, i) - (((b[Q3K_HMASK + i % 32] >> (i / 32)) & 1) ? 0 : 4);
                out[i] = scale * (float)q;
            }
        }
    }
}

// Q4_K/Q5_K keep 8 six-bit scales and 8 six-bit mins in 12 bytes: bytes 0..3 and 4..7 hold the low
// 6 bits of scales 0..3 and mins 0..3; scales/mins 4..7 keep their low nibbles in bytes 8..11 and
// their top 2 bits in the spare top bits of bytes 0..3 / 4..7.
static inline void unpack_k_scale(const uint8_t packed[PUNA_K_SCALE_BYTES], int j, int *scale, int *min) {
    if (j < 4) {
        *scale = packed[j] & 63;
        *min = packed[j + 4] & 63;
    } else {
        *scale = (packed[j + 4] & 0x0f) | ((packed[j - 4] >> 6) << 4);
        *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
    }
}

static inline void pack_k_scales(uint8_t packed[PUNA_K_SCALE_BYTES], const uint8_t scale[8], const uint8_t min[8]) {
    for (int j = 0; j < 4; j++) {
        packed[j] = (uint8_t)(scale[j] | ((scale[j + 4] >> 4) << 6));
        packed[j + 4] = (uint8_t)(min[j] | ((min[j + 4] >> 4) << 6));
        packed[j + 8] = (uint8_t)((scale[j + 4] & 0x0f) | ((min[j + 4] & 0x0f) << 4));
    }
}

static void decode_q4_K(const void *blocks, float *out, int64_t n) {
    const puna_block_q4_K *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, out += PUNA_QK_K) {
        float d = puna_f16_to_f32(b[ib].d), dmin = puna_f16_to_f32(b[ib].dmin);
        for (int sub = 0; sub < 8; sub++) {
            int sc, m;
            unpack_k_scale(b[ib].scales, sub, &sc, &m);
            float scale = d * (float)sc, min = dmin * (float)m;
            const uint8_t *qs = b[ib].qs + 32 * (sub / 2);  // sub-blocks 2k and 2k+1 share 32 bytes
            int shift = 4 * (sub % 2);
            for (int l = 0; l < 32; l++) out[32 * sub + l] = scale * (float)((qs[l] >> shift) & 0x0f) - min;
        }
    }
}

static void decode_q5_K(const void *blocks, float *out, int64_t n) {
    const puna_block_q5_K *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, out += PUNA_QK_K) {
        float d = puna_f16_to_f32(b[ib].d), dmin = puna_f16_to_f32(b[ib].dmin);
        for (int sub = 0; sub < 8; sub++) {
            int sc, m;
            unpack_k_scale(b[ib].scales, sub, &sc, &m);
            float scale = d * (float)sc, min = dmin * (float)m;
            const uint8_t *qs = b[ib].qs + 32 * (sub / 2);
            int shift = 4 * (sub % 2);
            for (int l = 0; l < 32; l++) {
                int q = ((qs[l] >> shift) & 0x0f) | (((b[ib].qh[l] >> sub) & 1) << 4);  // bit 4: bit `sub` of qh[l]
                out[32 * sub + l] = scale * (float)q - min;
            }
        }
    }
}

// Q6_K: within each 128 weights, weight 32 * s + l takes its low nibble from ql[l] (s = 0, 2) or
// ql[l + 32] (s = 1, 3), low half for s < 2, and its top 2 bits from bits 2s..2s+1 of qh[l].
static inline int q6_code(const puna_block_q6_K *b, int i) {
    int half = i / 128, s = (i % 128) / 32, l = i % 32;
    const uint8_t *ql = b->ql + 64 * half + 32 * (s & 1), *qh = b->qh + 32 * half;
    int low = (ql[l] >> (4 * (s >> 1))) & 0x0f;
    return low | (((qh[l] >> (2 * s)) & 3) << 4);
}

static void decode_q6_K(const void *blocks, float *out, int64_t n) {
    const puna_block_q6_K *b = blocks;
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, out += PUNA_QK_K) {
        float d = puna_f16_to_f32(b[ib].d);
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            float scale = d * (float)b[ib].scales[sub];
            for (int l = 0; l < 16; l++) out[16 * sub + l] = scale * (float)(q6_code(&b[ib], 16 * sub + l) - 32);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// K-quant encoders: llama.cpp's reference search (no importance matrix), redone step for step in the
// same float order, so the bytes and thus the error equal what `llama-quantize` produces without imatrix.

// Asymmetric sub-block fit (Q4_K, Q5_K): find scale > 0 and min <= 0 with x ~ scale * L + min,
// L in [0, nmax], minimising the w-weighted squared error. The plain (max - min) / nmax grid is the
// starting point; then nsteps + 1 grids with (nmax + rmin + rdelta * step) levels from the current min
// up to max are tried, each followed by the closed-form least-squares scale and min for the levels it
// chose. An improvement moves the min, and later grids start from it.
// Writes L, returns the scale and stores -min in *neg_min.
static float fit_scale_and_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                               float rmin, float rdelta, int nsteps) {
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;  // the offset is only ever subtracted
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *neg_min = -min;
        return 0.0f;
    }
    float inv = (float)nmax / (max - min);
    float scale = 1.0f / inv;
    float best_err = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clamp_int(nearest_even_int(inv * (x[i] - min)), 0, nmax);
        float diff = scale * (float)L[i] + min - x[i];
        best_err += w[i] * (diff * diff);
    }
    uint8_t trial[32];
    for (int step = 0; step <= nsteps; step++) {
        inv = (rmin + rdelta * (float)step + (float)nmax) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest_even_int(inv * (x[i] - min)), 0, nmax);
            trial[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float trial_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        float trial_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (trial_min > 0) {  // a positive offset is not representable: refit the scale alone
            trial_min = 0;
            trial_scale = sum_xl / sum_l2;
        }
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float diff = trial_scale * (float)trial[i] + trial_min - x[i];
            err += w[i] * (diff * diff);
        }
        if (err < best_err) {
            memcpy(L, trial, (size_t)n);
            best_err = err;
            scale = trial_scale;
            min = trial_min;
        }
    }
    *neg_min = -min;
    return scale;
}

// Shared by Q4_K (4-bit codes) and Q5_K (5-bit): fit each 32-weight sub-block, quantize the 8 scales
// and 8 mins to 6 bits against the super-block's d and dmin, then requantize the weights with the
// scales as they will be decoded.
static void encode_k_asymmetric(const float *x, int nmax, float rmin, float rdelta, int nsteps,
                                puna_f16 *d_out, puna_f16 *dmin_out, uint8_t packed[PUNA_K_SCALE_BYTES],
                                uint8_t L[PUNA_QK_K]) {
    float scales[8], mins[8], weights[32];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int sub = 0; sub < 8; sub++) {
        const float *xs = x + 32 * sub;
        // weight each value by its magnitude plus the sub-block RMS: big values matter more, none is ignored
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        float rms = sqrtf(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++) weights[l] = rms + fabsf(xs[l]);
        scales[sub] = fit_scale_and_min(32, nmax, xs, weights, L + 32 * sub, &mins[sub], rmin, rdelta, nsteps);
        if (scales[sub] > max_scale) max_scale = scales[sub];
        if (mins[sub] > max_min) max_min = mins[sub];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t qscale[8], qmin[8];
    for (int sub = 0; sub < 8; sub++) {
        uint8_t ls = (uint8_t)nearest_even_int(inv_scale * scales[sub]);
        uint8_t lm = (uint8_t)nearest_even_int(inv_min * mins[sub]);
        qscale[sub] = ls > 63 ? 63 : ls;
        qmin[sub] = lm > 63 ? 63 : lm;
    }
    pack_k_scales(packed, qscale, qmin);
    *d_out = puna_f32_to_f16(max_scale / 63.0f);
    *dmin_out = puna_f32_to_f16(max_min / 63.0f);
    float d = puna_f16_to_f32(*d_out), dmin = puna_f16_to_f32(*dmin_out);
    for (int sub = 0; sub < 8; sub++) {
        float scale = d * (float)qscale[sub];
        if (scale == 0.0f) continue;  // decodes to -min whatever the codes; keep the fitted ones
        float min = dmin * (float)qmin[sub];
        for (int l = 0; l < 32; l++) {
            L[32 * sub + l] = (uint8_t)clamp_int(nearest_even_int((x[32 * sub + l] + min) / scale), 0, nmax);
        }
    }
}

static void encode_q4_K(const float *in, void *blocks, int64_t n) {
    puna_block_q4_K *b = blocks;
    uint8_t L[PUNA_QK_K];
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, in += PUNA_QK_K) {
        encode_k_asymmetric(in, 15, -1.0f, 0.1f, 20, &b[ib].d, &b[ib].dmin, b[ib].scales, L);
        for (int k = 0; k < 4; k++) {  // 64 weights per 32 bytes: the first 32 low, the next 32 high
            for (int l = 0; l < 32; l++) b[ib].qs[32 * k + l] = (uint8_t)(L[64 * k + l] | (L[64 * k + 32 + l] << 4));
        }
    }
}

static void encode_q5_K(const float *in, void *blocks, int64_t n) {
    puna_block_q5_K *b = blocks;
    uint8_t L[PUNA_QK_K];
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, in += PUNA_QK_K) {
        encode_k_asymmetric(in, 31, -0.5f, 0.1f, 15, &b[ib].d, &b[ib].dmin, b[ib].scales, L);
        memset(b[ib].qh, 0, sizeof b[ib].qh);
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; l++) {
                int lo = L[64 * k + l], hi = L[64 * k + 32 + l];
                b[ib].qs[32 * k + l] = (uint8_t)((lo & 0x0f) | ((hi & 0x0f) << 4));
                b[ib].qh[l] |= (uint8_t)(((lo >> 4) << (2 * k)) | ((hi >> 4) << (2 * k + 1)));
            }
        }
    }
}

// Weighted sums of the symmetric codes the grid `inv` assigns, weight x^2 (Q6_K's error measure).
static void symmetric_sums(int n, int nmax, const float *x, float inv, float *sumlx, float *suml2) {
    float slx = 0.0f, sl2 = 0.0f;
    for (int i = 0; i < n; i++) {
        int l = clamp_int(nearest_even_int(inv * x[i]), -nmax, nmax - 1);
        float w = x[i] * x[i];
        slx += w * x[i] * (float)l;
        sl2 += w * (float)l * (float)l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

static void symmetric_codes(int n, int nmax, const float *x, float inv, uint8_t *L) {
    for (int i = 0; i < n; i++) L[i] = (uint8_t)(clamp_int(nearest_even_int(inv * x[i]), -nmax, nmax - 1) + nmax);
}

// Symmetric sub-block fit (Q6_K): codes in [-nmax, nmax - 1] stored + nmax. The plain grid puts the
// largest-magnitude value on -nmax; 18 grids stretched by -0.9 .. +0.9 levels are tried, and the one whose
// least-squares scale explains the most weighted energy (largest sumlx^2 / suml2) wins. Returns the scale.
static float fit_symmetric_scale(int n, int nmax, const float *x, uint8_t *L) {
    float max = 0.0f, amax = 0.0f;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }
    }
    if (amax < 1e-15f) {  // nothing to represent
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float inv = (float)(-nmax) / max, sumlx, suml2;
    symmetric_codes(n, nmax, x, inv, L);
    symmetric_sums(n, nmax, x, inv, &sumlx, &suml2);
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;  // = sumlx^2 / suml2, the energy the fit explains
    for (int tweak = -9; tweak <= 9; tweak++) {
        if (tweak == 0) continue;
        inv = -((float)nmax + 0.1f * (float)tweak) / max;
        symmetric_sums(n, nmax, x, inv, &sumlx, &suml2);
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            symmetric_codes(n, nmax, x, inv, L);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static void encode_q6_K(const float *in, void *blocks, int64_t n) {
    puna_block_q6_K *b = blocks;
    uint8_t L[PUNA_QK_K];
    float scales[PUNA_QK_K / 16];
    for (int64_t ib = 0; ib < n / PUNA_QK_K; ib++, in += PUNA_QK_K) {
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            scales[sub] = fit_symmetric_scale(16, 32, in + 16 * sub, L + 16 * sub);
            if (fabsf(scales[sub]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[sub]);
                max_scale = scales[sub];
            }
        }
        if (max_abs_scale < 1e-15f) {
            memset(&b[ib], 0, sizeof b[ib]);
            continue;
        }
        // the signed scales become int8 against d; the largest lands on -128 like the codes do
        float inv = -128.0f / max_scale;
        b[ib].d = puna_f32_to_f16(1.0f / inv);
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            int s = nearest_even_int(inv * scales[sub]);
            b[ib].scales[sub] = (int8_t)(s > 127 ? 127 : s);
        }
        float d = puna_f16_to_f32(b[ib].d);
        for (int sub = 0; sub < PUNA_QK_K / 16; sub++) {
            float scale = d * (float)b[ib].scales[sub];
            if (scale == 0.0f) continue;  // decodes to 0 whatever the codes; keep the fitted ones
            for (int l = 0; l < 16; l++) {
                L[16 * sub + l] = (uint8_t)(clamp_int(nearest_even_int(in[16 * sub + l] / scale), -32, 31) + 32);
            }
        }
        for (int half = 0; half < 2; half++) {  // the inverse of q6_code
            const uint8_t *q = L + 128 * half;
            uint8_t *ql = b[ib].ql + 64 * half, *qh = b[ib].qh + 32 * half;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                ql[l + 32] = (uint8_t)((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                qh[l] = (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

#define ENTRY(id, nm, bs, ts, dec, enc) [id] = { nm, bs, ts, dec, enc }

const puna_type_info puna_type_table[PUNA_TYPE_COUNT] = {
    ENTRY(PUNA_TYPE_F32, "f32", 1, 4, decode_f32, encode_f32),
    ENTRY(PUNA_TYPE_F16, "f16", 1, 2, decode_f16, encode_f16),
    ENTRY(PUNA_TYPE_Q4_0, "q4_0", PUNA_QK, sizeof(puna_block_q4_0), decode_q4_0, encode_q4_0),
    ENTRY(PUNA_TYPE_Q4_1, "q4_1", PUNA_QK, sizeof(puna_block_q4_1), decode_q4_1, encode_q4_1),
    ENTRY(PUNA_TYPE_Q5_0, "q5_0", PUNA_QK, sizeof(puna_block_q5_0), decode_q5_0, encode_q5_0),
    ENTRY(PUNA_TYPE_Q5_1, "q5_1", PUNA_QK, sizeof(puna_block_q5_1), decode_q5_1, encode_q5_1),
    ENTRY(PUNA_TYPE_Q8_0, "q8_0", PUNA_QK, sizeof(puna_block_q8_0), decode_q8_0, encode_q8_0),
    ENTRY(PUNA_TYPE_Q8_1, "q8_1", PUNA_QK, sizeof(puna_block_q8_1), NULL, NULL),
    ENTRY(PUNA_TYPE_Q2_K, "q2_K", PUNA_QK_K, 84, decode_q2_K, NULL),
    ENTRY(PUNA_TYPE_Q3_K, "q3_K", PUNA_QK_K, 110, decode_q3_K, NULL),
    ENTRY(PUNA_TYPE_Q4_K, "q4_K", PUNA_QK_K, sizeof(puna_block_q4_K), decode_q4_K, encode_q4_K),
    ENTRY(PUNA_TYPE_Q5_K, "q5_K", PUNA_QK_K, sizeof(puna_block_q5_K), decode_q5_K, encode_q5_K),
    ENTRY(PUNA_TYPE_Q6_K, "q6_K", PUNA_QK_K, sizeof(puna_block_q6_K), decode_q6_K, encode_q6_K),
    ENTRY(PUNA_TYPE_Q8_K, "q8_K", PUNA_QK_K, sizeof(puna_block_q8_K), NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_XXS, "iq2_xxs", PUNA_QK_K, 66, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_XS, "iq2_xs", PUNA_QK_K, 74, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ3_XXS, "iq3_xxs", PUNA_QK_K, 98, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ1_S, "iq1_s", PUNA_QK_K, 50, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ4_NL, "iq4_nl", PUNA_QK, 18, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ3_S, "iq3_s", PUNA_QK_K, 110, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_S, "iq2_s", PUNA_QK_K, 82, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ4_XS, "iq4_xs", PUNA_QK_K, 136, NULL, NULL),
    ENTRY(PUNA_TYPE_I8, "i8", 1, 1, NULL, NULL),
    ENTRY(PUNA_TYPE_I16, "i16", 1, 2, NULL, NULL),
    ENTRY(PUNA_TYPE_I32, "i32", 1, 4, NULL, NULL),
    ENTRY(PUNA_TYPE_I64, "i64", 1, 8, NULL, NULL),
    ENTRY(PUNA_TYPE_F64, "f64", 1, 8, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ1_M, "iq1_m", PUNA_QK_K, 56, NULL, NULL),
    ENTRY(PUNA_TYPE_BF16, "bf16", 1, 2, decode_bf16, encode_bf16),
    ENTRY(PUNA_TYPE_TQ1_0, "tq1_0", PUNA_QK_K, 54, NULL, NULL),
    ENTRY(PUNA_TYPE_TQ2_0, "tq2_0", PUNA_QK_K, 66, NULL, NULL),
    ENTRY(PUNA_TYPE_MXFP4, "mxfp4", PUNA_QK, 17, NULL, NULL),
};
