// dequant8(rb, k0, lo, hi): weights k0 .. k0+7 of the row whose first byte is rb, as f32, in the
// order of the row. k0 is a multiple of 8, so the 8 weights always share one scale. One variant per
// GGML type, picked by the TYPE_* define the generator passes. Each mirrors the CPU decoder in
// Sources/CPuna/quants.c (scale formed first, then scale * q - min); the bitsandbytes variants
// read the layout of Sources/CPunaVulkan/bnb_layout.h and mirror Sources/CPuna/bnb.c.
//
// dequant_init(table) runs first in every main, with every invocation: the types that decode
// through a code table (TYPE_BNB4) stage the push constants' table in shared memory there.
#include "bnb_layout.h"

#if !defined(TYPE_BNB4)
void dequant_init(float table[16]) {}
#endif

#if defined(TYPE_F32)
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint i = (rb >> 2) + k0;
    lo = vec4(uintBitsToFloat(w[i]), uintBitsToFloat(w[i + 1u]), uintBitsToFloat(w[i + 2u]), uintBitsToFloat(w[i + 3u]));
    hi = vec4(uintBitsToFloat(w[i + 4u]), uintBitsToFloat(w[i + 5u]), uintBitsToFloat(w[i + 6u]), uintBitsToFloat(w[i + 7u]));
}

#elif defined(TYPE_F16)
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint b = rb + 2u * k0;
    lo = vec4(unpackHalf2x16(ld32(b)), unpackHalf2x16(ld32(b + 4u)));
    hi = vec4(unpackHalf2x16(ld32(b + 8u)), unpackHalf2x16(ld32(b + 12u)));
}

#elif defined(TYPE_Q4_0)
// 18-byte blocks of 32: f16 d, 16 bytes; weight j < 16 is the low nibble of byte j, weight
// j + 16 its high nibble; value d * (q - 8).
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 5) * 18u;
    uint j = k0 & 31u;
    float d = ldf16(base);
    uint q0 = ld32(base + 2u + (j & 15u)), q1 = ld32(base + 6u + (j & 15u));
    if (j < 16u) { lo = low_nibbles(q0); hi = low_nibbles(q1); }
    else { lo = high_nibbles(q0); hi = high_nibbles(q1); }
    lo = d * (lo - 8.0);
    hi = d * (hi - 8.0);
}

#elif defined(TYPE_Q8_0)
// 34-byte blocks of 32: f16 d, 32 signed bytes; value d * q.
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 5) * 34u;
    uint j = k0 & 31u;
    float d = ldf16(base);
    lo = d * signed_bytes(ld32(base + 2u + j));
    hi = d * signed_bytes(ld32(base + 6u + j));
}

#elif defined(TYPE_Q4_K)
// 144-byte super-blocks of 256: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes
// of nibbles. Sub-block s (32 weights) uses byte run 32 * (s / 2), low nibbles for even s.
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 8) * 144u;
    uint k = k0 & 255u, s = k >> 5, l = k & 31u;
    float d = ldf16(base), dmin = ldf16(base + 2u);
    uint sc, m;
    if (s < 4u) {
        sc = ld8(base + 4u + s) & 63u;
        m = ld8(base + 8u + s) & 63u;
    } else {
        sc = (ld8(base + 8u + s) & 15u) | ((ld8(base + s) >> 6) << 4);
        m = (ld8(base + 8u + s) >> 4) | ((ld8(base + 4u + s) >> 6) << 4);
    }
    float scale = d * float(sc), mn = dmin * float(m);
    uint qb = base + 16u + 32u * (s >> 1) + l;
    uint q0 = ld32(qb), q1 = ld32(qb + 4u);
    if ((s & 1u) == 0u) { lo = low_nibbles(q0); hi = low_nibbles(q1); }
    else { lo = high_nibbles(q0); hi = high_nibbles(q1); }
    lo = scale * lo - mn;
    hi = scale * hi - mn;
}

#elif defined(TYPE_Q4_1)
// 20-byte blocks of 32: f16 d, f16 m, 16 bytes of nibbles as in Q4_0; value d * q + m.
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 5) * 20u;
    uint j = k0 & 31u;
    float d = ldf16(base), m = ldf16(base + 2u);
    uint q0 = ld32(base + 4u + (j & 15u)), q1 = ld32(base + 8u + (j & 15u));
    if (j < 16u) { lo = low_nibbles(q0); hi = low_nibbles(q1); }
    else { lo = high_nibbles(q0); hi = high_nibbles(q1); }
    lo = d * lo + m;
    hi = d * hi + m;
}

#elif defined(TYPE_Q5_0) || defined(TYPE_Q5_1)
// Q5_0: 22-byte blocks of 32: f16 d, 32 bits qh, 16 bytes of nibbles; value d * (q - 16).
// Q5_1: 24-byte blocks: f16 d, f16 m, qh, nibbles; value d * q + m. Bit 4 of weight j is bit j of qh.
#if defined(TYPE_Q5_0)
const uint BLOCK_BYTES = 22u, QH = 2u, QS = 6u;
#else
const uint BLOCK_BYTES = 24u, QH = 4u, QS = 8u;
#endif
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 5) * BLOCK_BYTES;
    uint j = k0 & 31u;
    float d = ldf16(base);
    uint high = ld32(base + QH) >> j;
    uvec4 sh = uvec4(0u, 1u, 2u, 3u);
    vec4 h0 = vec4(((uvec4(high) >> sh) & 1u) << 4), h1 = vec4(((uvec4(high) >> (sh + 4u)) & 1u) << 4);
    uint q0 = ld32(base + QS + (j & 15u)), q1 = ld32(base + QS + 4u + (j & 15u));
    if (j < 16u) { lo = low_nibbles(q0); hi = low_nibbles(q1); }
    else { lo = high_nibbles(q0); hi = high_nibbles(q1); }
#if defined(TYPE_Q5_0)
    lo = d * (lo + h0 - 16.0);
    hi = d * (hi + h1 - 16.0);
#else
    float m = ldf16(base + 2u);
    lo = d * (lo + h0) + m;
    hi = d * (hi + h1) + m;
#endif
}

#elif defined(TYPE_Q5_K)
// 176-byte super-blocks of 256: f16 d, f16 dmin, 12 bytes of scales/mins (as Q4_K), qh[32],
// qs[128]. As Q4_K, plus bit 4 of weight 32 * s + l from bit s of qh[l].
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 8) * 176u;
    uint k = k0 & 255u, s = k >> 5, l = k & 31u;
    float d = ldf16(base), dmin = ldf16(base + 2u);
    uint sc, m;
    if (s < 4u) {
        sc = ld8(base + 4u + s) & 63u;
        m = ld8(base + 8u + s) & 63u;
    } else {
        sc = (ld8(base + 8u + s) & 15u) | ((ld8(base + s) >> 6) << 4);
        m = (ld8(base + 8u + s) >> 4) | ((ld8(base + 4u + s) >> 6) << 4);
    }
    float scale = d * float(sc), mn = dmin * float(m);
    uint qb = base + 48u + 32u * (s >> 1) + l;
    uint q0 = ld32(qb), q1 = ld32(qb + 4u);
    if ((s & 1u) == 0u) { lo = low_nibbles(q0); hi = low_nibbles(q1); }
    else { lo = high_nibbles(q0); hi = high_nibbles(q1); }
    uvec4 sh = uvec4(0u, 8u, 16u, 24u) + s;
    lo += vec4(((uvec4(ld32(base + 16u + l)) >> sh) & 1u) << 4);
    hi += vec4(((uvec4(ld32(base + 20u + l)) >> sh) & 1u) << 4);
    lo = scale * lo - mn;
    hi = scale * hi - mn;
}

#elif defined(TYPE_Q6_K)
// 210-byte super-blocks of 256: ql[128], qh[64], int8 scales[16], f16 d. Within each 128 weights,
// weight 32 * s + l: low nibble from ql[l] (s = 0, 2) or ql[l + 32] (s = 1, 3), low half for s < 2;
// top 2 bits from bits 2s..2s+1 of qh[l]; scale per 16 weights; value d * sc * (q - 32).
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 >> 8) * 210u;
    uint i = k0 & 255u, half_ = i >> 7, s = (i & 127u) >> 5, l = i & 31u;
    uint qlb = base + 64u * half_ + 32u * (s & 1u) + l;
    uint qhb = base + 128u + 32u * half_ + l;
    uint shift = 4u * (s >> 1), hshift = 2u * s;
    uint l0 = ld32(qlb), l1 = ld32(qlb + 4u), h0 = ld32(qhb), h1 = ld32(qhb + 4u);
    uvec4 sh = uvec4(0u, 8u, 16u, 24u);
    uvec4 q0 = ((uvec4(l0) >> (sh + shift)) & 15u) | (((uvec4(h0) >> (sh + hshift)) & 3u) << 4);
    uvec4 q1 = ((uvec4(l1) >> (sh + shift)) & 15u) | (((uvec4(h1) >> (sh + hshift)) & 3u) << 4);
    float scale = ldf16(base + 208u) * float(bitfieldExtract(int(ld8(base + 192u + (i >> 4))), 0, 8));
    lo = scale * (vec4(q0) - 32.0);
    hi = scale * (vec4(q1) - 32.0);
}

#elif defined(TYPE_BNB4)
// bitsandbytes NF4 / FP4: blocks of 64 of an f32 absmax then 32 bytes of codes, element 2i in the
// high nibble of byte i; value quant_map[code] * absmax (dequantize_4bit's one f32 product). k0 is
// a multiple of 8, so the 8 codes are one aligned 32-bit word of one block.
shared float code_table[16];
void dequant_init(float table[16]) {
    for (uint i = gl_LocalInvocationID.x; i < 16u; i += WORKGROUP_SIZE) code_table[i] = table[i];
    barrier();
}
// The 4 elements of the low two bytes of q, in element order (byte 0 high, byte 0 low, byte 1 high, byte 1 low).
vec4 bnb4_values(uint q) {
    return vec4(code_table[(q >> 4) & 15u], code_table[q & 15u], code_table[(q >> 12) & 15u], code_table[(q >> 8) & 15u]);
}
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    uint base = rb + (k0 / PUNA_VK_BNB4_BLOCK) * PUNA_VK_BNB4_BLOCK_BYTES;
    float absmax = uintBitsToFloat(ld32(base + PUNA_VK_BNB4_ABSMAX));
    uint q = ld32(base + PUNA_VK_BNB4_CODES + (k0 % PUNA_VK_BNB4_BLOCK) / 2u);
    lo = bnb4_values(q) * absmax;
    hi = bnb4_values(q >> 16) * absmax;
}

#elif defined(TYPE_BNB_INT8)
// bitsandbytes LLM.int8: a row is its f32 SCB, then cols int8; value (q * SCB) * (1 / 127), the two
// f32 products of int8_vectorwise_dequant in that order.
void dequant8(uint rb, uint k0, out vec4 lo, out vec4 hi) {
    float s = uintBitsToFloat(ld32(rb + PUNA_VK_BNB_INT8_SCALE));
    uint b = rb + PUNA_VK_BNB_INT8_VALUES + k0;
    lo = (signed_bytes(ld32(b)) * s) * (1.0 / 127.0);
    hi = (signed_bytes(ld32(b + 4u)) * s) * (1.0 / 127.0);
}

#else
#error "define one TYPE_*"
#endif
