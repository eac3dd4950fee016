#version 450
#extension GL_GOOGLE_include_directive : require
// Append the new tokens' keys and values at positions pos0.. of one layer's cache, as f32, as
// f16 pairs packed into uints (no 16-bit storage needed), or as GGML q8_0 blocks encoded as the
// CPU's cache encodes them (Sources/CPuna/quants.c: d = amax / 127, q = x / d rounded half away
// from zero, d stored as f16 rounded to nearest even), so the bytes are the CPU cache's for the
// same keys. A layer that keeps a ring of rows (sliding window) stores position q in row q % ring.
// The new rows start `src_off` floats into K and V (one sequence's rows of a batched step).
#include "common.glsl"

layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) buffer KC { uint kc[]; };
layout(std430, binding = 3) buffer VC { uint vc[]; };

layout(push_constant) uniform Params {
    uint n_tokens, kv_dim, pos0, format;   // format: 0 f32, 1 f16, 2 q8_0 (enum puna_vk_kv_format)
    uint ring;   // 0: one row per position; > 0: rows in the ring
    uint src_off;   // floats before the first new row in K and V
} p;

// f32 to f16 bits, round to nearest even, for finite v >= 0 (a q8_0 scale): subnormal results
// round at the fixed 2^-24 step, too large ones become inf.
uint half_bits(float v) {
    uint a = floatBitsToUint(v);
    if (a >= 0x477ff000u) return 0x7c00u;
    if (a < 0x38800000u) {
        if (a <= 0x33000000u) return 0u;
        uint man = (a & 0x7fffffu) | 0x800000u;
        uint shift = 126u - (a >> 23);
        uint half_ulp = 1u << (shift - 1u), q = man >> shift, rem = man & ((1u << shift) - 1u);
        return q + ((rem > half_ulp || (rem == half_ulp && (q & 1u) != 0u)) ? 1u : 0u);
    }
    uint q = (a - 0x38000000u) >> 13, rem = a & 0x1fffu;
    return q + ((rem > 0x1000u || (rem == 0x1000u && (q & 1u) != 0u)) ? 1u : 0u);
}

// x * id rounded half away from zero, as an int8 byte.
uint q8(float x, float id) {
    precise float s = x * id;
    float a = abs(s), whole = floor(a);
    int r = int(whole) + (a - whole >= 0.5 ? 1 : 0);
    return uint((s < 0.0 ? -r : r) & 255);
}

// Block b (index within the layer: 34-byte blocks back to back) from the 32 values of SRC at s.
// Every other block starts 2 bytes into a word, so each block shares one word with a neighbour
// that another invocation may be writing: that half goes in with atomics, the rest with stores.
#define STORE_Q8_0(SRC, DST, s, b) {                                                            \
    float amax = 0.0;                                                                           \
    for (uint i = 0u; i < 32u; i++) amax = max(amax, abs(SRC[s + i]));                         \
    precise float d = amax / 127.0;                                                             \
    precise float id = d == 0.0 ? 0.0 : 1.0 / d;                                                \
    uint h[17];                                                                                 \
    h[0] = half_bits(d);                                                                        \
    for (uint i = 0u; i < 16u; i++) h[1u + i] = q8(SRC[s + 2u * i], id) | (q8(SRC[s + 2u * i + 1u], id) << 8); \
    uint w = (34u * b) / 4u;                                                                    \
    if (((34u * b) & 2u) == 0u) {                                                               \
        for (uint i = 0u; i < 8u; i++) DST[w + i] = h[2u * i] | (h[2u * i + 1u] << 16);         \
        atomicAnd(DST[w + 8u], 0xffff0000u);                                                    \
        atomicOr(DST[w + 8u], h[16]);                                                           \
    } else {                                                                                    \
        atomicAnd(DST[w], 0x0000ffffu);                                                         \
        atomicOr(DST[w], h[0] << 16);                                                           \
        for (uint i = 0u; i < 8u; i++) DST[w + 1u + i] = h[1u + 2u * i] | (h[2u + 2u * i] << 16); \
    }                                                                                           \
}

void main() {
    uint i = gl_GlobalInvocationID.x;   // pair index within a row (q8_0: block index)
    uint t = gl_GlobalInvocationID.y;
    if (t >= p.n_tokens) return;
    uint row = p.ring > 0u ? (p.pos0 + t) % p.ring : p.pos0 + t;
    if (p.format == 2u) {
        uint nb = p.kv_dim / 32u;
        if (i >= nb) return;
        uint src = p.src_off + t * p.kv_dim + 32u * i, b = row * nb + i;
        STORE_Q8_0(k, kc, src, b)
        STORE_Q8_0(v, vc, src, b)
        return;
    }
    if (2u * i >= p.kv_dim) return;
    uint src = p.src_off + t * p.kv_dim + 2u * i;
    if (p.format == 1u) {
        uint dst = (row * p.kv_dim) / 2u + i;
        kc[dst] = packHalf2x16(vec2(k[src], k[src + 1u]));
        vc[dst] = packHalf2x16(vec2(v[src], v[src + 1u]));
    } else {
        uint dst = row * p.kv_dim + 2u * i;
        kc[dst] = floatBitsToUint(k[src]); kc[dst + 1u] = floatBitsToUint(k[src + 1u]);
        vc[dst] = floatBitsToUint(v[src]); vc[dst + 1u] = floatBitsToUint(v[src + 1u]);
    }
}
