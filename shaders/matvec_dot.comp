#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_EXT_spirv_intrinsics : require
// int8 tier: y[t][r] = alpha * W[r] . x[t] (+ y[t][r] when accumulate) on activations quantized by
// quantize.comp, computed as the CPU kernels define it (Sources/CPuna/kernels_internal.h, one
// level): exact integer block sums through the packed 4x8 dot product, then the same float steps
// in the same order, so the result has the CPU kernels' bits.
//   Simple quants (blocks of 32): 16 accumulators per (row, token), accumulator 4k + j owning
//   lane j (weights 4j..4j+3 and 16+4j..16+4j+3) of blocks b = k mod 4, in block order; 16
//   invocations per row each run one accumulator's chain, then reduce16's fixed tree.
//   K-quants (blocks of 256): one accumulator in block order; 16 invocations per row compute the
//   integer sums of 16 blocks at a time, and one runs the float chain over them.
// 4 rows per workgroup of 64; token t = workgroup z.
#define WEIGHTS_BINDING 0
#include "common.glsl"

// OpSDot (SPV_KHR_integer_dot_product) on two words of 4 signed bytes; glslang has no
// GL_EXT_integer_dot_product in the versions Debian ships, hence the intrinsic.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot_packed(int a, int b, spirv_literal int packed_format);
int dot4(uint a, uint b) { return sdot_packed(int(a), int(b), 0); }

// The CPU's fmaf, rounded once. Vulkan lets fma() run as a multiply and an add (lavapipe does);
// where the host's probe finds that, the FMA_F64 variant computes it in double: the f32 product is
// exact there, so only the sum rounds (to double, then to f32: the same result except when the
// double lands exactly on an f32 tie, about one step in 2^29).
#ifdef FMA_F64
float fma1(float a, float b, float c) { return float(double(a) * double(b) + double(c)); }
#else
float fma1(float a, float b, float c) { return fma(a, b, c); }
#endif

layout(std430, binding = 1) readonly buffer Act { uint act[]; };
layout(std430, binding = 2) buffer Y { float y[]; };

layout(push_constant, std430) uniform Params {
    uint rows, cols, row_bytes, w_off;   // w_off: byte offset of row 0 in the weights binding
    uint a_stride;                       // words per token of quantized activations
    uint y_off, y_stride;                // in floats
    uint groups_x, accumulate;
    float alpha;
} p;

// Four unsigned n-bit codes (one per byte, n = 4, 5, 6) minus 2^(n-1), as signed bytes: flipping
// the top code bit subtracts 2^(n-1) within n bits, and bytes whose code was below 2^(n-1) get
// the sign extension.
uint centered(uint codes, uint n) {
    uint half_ = 1u << (n - 1u);
    uint negative = (~codes >> (n - 1u)) & 0x01010101u;
    return (codes ^ (half_ * 0x01010101u)) | (negative * (256u - 2u * half_));
}
// Bits 0..3 of h to bit 0 of bytes 0..3.
uint spread4(uint h) { return (h & 1u) | ((h & 2u) << 7) | ((h & 4u) << 14) | ((h & 8u) << 21); }

void store(uint row, uint t, float total) {
    uint yi = p.y_off + t * p.y_stride + row;
    float v = p.alpha * total;
    y[yi] = p.accumulate != 0u ? y[yi] + v : v;
}

#if defined(TYPE_Q4_0) || defined(TYPE_Q4_1) || defined(TYPE_Q5_0) || defined(TYPE_Q5_1) || defined(TYPE_Q8_0)
#if defined(TYPE_Q4_0)
#define BLOCK_BYTES 18u
#elif defined(TYPE_Q4_1)
#define BLOCK_BYTES 20u
#define HAS_MIN
#elif defined(TYPE_Q5_0)
#define BLOCK_BYTES 22u
#elif defined(TYPE_Q5_1)
#define BLOCK_BYTES 24u
#define HAS_MIN
#else
#define BLOCK_BYTES 34u
#endif

// Lane j of the block at byte bb: the signed codes of weights 4j..4j+3 (lo) and 16+4j..16+4j+3
// (hi), the scale d and (Q4_1/Q5_1) the min m.
void lane(uint bb, uint j, out uint lo, out uint hi, out float d, out float m) {
    d = ldf16(bb);
    m = 0.0;
#if defined(TYPE_Q4_0)
    uint q = ld32(bb + 2u + 4u * j);
    lo = centered(q & 0x0f0f0f0fu, 4u);
    hi = centered((q >> 4) & 0x0f0f0f0fu, 4u);
#elif defined(TYPE_Q4_1)
    m = ldf16(bb + 2u);
    uint q = ld32(bb + 4u + 4u * j);
    lo = q & 0x0f0f0f0fu;
    hi = (q >> 4) & 0x0f0f0f0fu;
#elif defined(TYPE_Q5_0)
    uint qh = ld32(bb + 2u), q = ld32(bb + 6u + 4u * j);
    lo = centered((q & 0x0f0f0f0fu) | (spread4((qh >> (4u * j)) & 15u) << 4), 5u);
    hi = centered(((q >> 4) & 0x0f0f0f0fu) | (spread4((qh >> (16u + 4u * j)) & 15u) << 4), 5u);
#elif defined(TYPE_Q5_1)
    m = ldf16(bb + 2u);
    uint qh = ld32(bb + 4u), q = ld32(bb + 8u + 4u * j);
    lo = (q & 0x0f0f0f0fu) | (spread4((qh >> (4u * j)) & 15u) << 4);
    hi = ((q >> 4) & 0x0f0f0f0fu) | (spread4((qh >> (16u + 4u * j)) & 15u) << 4);
#else
    lo = ld32(bb + 2u + 4u * j);
    hi = ld32(bb + 18u + 4u * j);
#endif
}

shared float partial[64];

void main() {
    uint group = gl_WorkGroupID.x + gl_WorkGroupID.y * p.groups_x;
    uint lid = gl_LocalInvocationID.x;
    uint row = group * 4u + lid / 16u;
    if (group * 4u >= p.rows) return;   // uniform per workgroup
    uint a = lid % 16u, k = a / 4u, j = a % 4u;
    uint t = gl_WorkGroupID.z;
    uint ab = t * p.a_stride, db = ab + p.cols / 4u, nb = p.cols / 32u;
    uint rb = p.w_off + min(row, p.rows - 1u) * p.row_bytes;
    precise float acc = 0.0;
    for (uint b = k; b < nb; b += 4u) {
        uint lo, hi;
        float d, m;
        lane(rb + b * BLOCK_BYTES, j, lo, hi, d, m);
        uint xlo = act[ab + 8u * b + j], xhi = act[ab + 8u * b + 4u + j];
        float dx = uintBitsToFloat(act[db + b]);
        // One level: (float)(p / 256) times (256 d) dx, as the CPU.
        precise float s = (d * 256.0) * dx;
        acc = fma1(s, float(dot4(lo, xlo) + dot4(hi, xhi)), acc);
#ifdef HAS_MIN
        int xs = 256 * (dot4(xlo, 0x01010101u) + dot4(xhi, 0x01010101u));
        precise float sm = m * dx;
        acc = fma1(sm, float(xs), acc);
#endif
    }
    partial[lid] = acc;
    barrier();
    if (a == 0u && row < p.rows) {
        precise float h8[8], h4[4];
        for (uint i = 0u; i < 8u; i++) h8[i] = partial[lid + i] + partial[lid + i + 8u];
        for (uint i = 0u; i < 4u; i++) h4[i] = h8[i] + h8[i + 4u];
        precise float total = (h4[0] + h4[2]) + (h4[1] + h4[3]);
        store(row, t, total);
    }
}

#else  // K-quants

#if defined(TYPE_Q4_K)
#define BLOCK_BYTES 144u
#elif defined(TYPE_Q5_K)
#define BLOCK_BYTES 176u
#else
#define BLOCK_BYTES 210u
#endif

#if defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
// The 6-bit scale and min of sub-block s of the packed 12 bytes at byte sb.
void scale_min(uint sb, uint s, out int sc, out int mn) {
    if (s < 4u) {
        sc = int(ld8(sb + s) & 63u);
        mn = int(ld8(sb + s + 4u) & 63u);
    } else {
        sc = int((ld8(sb + s + 4u) & 15u) | ((ld8(sb + s - 4u) >> 6) << 4));
        mn = int((ld8(sb + s + 4u) >> 4) | ((ld8(sb + s) >> 6) << 4));
    }
}
#endif

// Per block: its two float factors and integer sums. With one level X = 256 q, so the CPU's A and
// B are 256 times the sums of q here, and (float)A = 256 * (float)(A / 256) exactly.
shared float s_scale[64], s_min[64];
shared int s_a[64], s_b[64];

void main() {
    uint group = gl_WorkGroupID.x + gl_WorkGroupID.y * p.groups_x;
    uint lid = gl_LocalInvocationID.x;
    uint row = group * 4u + lid / 16u;
    if (group * 4u >= p.rows) return;   // uniform per workgroup
    uint a = lid % 16u;
    uint t = gl_WorkGroupID.z;
    uint ab = t * p.a_stride, db = ab + p.cols / 4u, nb = p.cols / 256u;
    uint rb = p.w_off + min(row, p.rows - 1u) * p.row_bytes;
    precise float acc = 0.0;
    for (uint b0 = 0u; b0 < nb; b0 += 16u) {
        uint b = b0 + a;
        if (b < nb) {
            uint bb = rb + b * BLOCK_BYTES, xb = ab + 64u * b;
            float dx = uintBitsToFloat(act[db + b]);
            int A = 0, B = 0;
#if defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
#if defined(TYPE_Q4_K)
            uint qs = bb + 16u;
#else
            uint qs = bb + 48u;
#endif
            for (uint s = 0u; s < 8u; s++) {
                int sc, mn;
                scale_min(bb + 4u, s, sc, mn);
                int dotv = 0, xs = 0;
                for (uint w4 = 0u; w4 < 8u; w4++) {
                    uint codes = (ld32(qs + 32u * (s / 2u) + 4u * w4) >> (4u * (s % 2u))) & 0x0f0f0f0fu;
#if defined(TYPE_Q5_K)
                    codes |= ((ld32(bb + 16u + 4u * w4) >> s) & 0x01010101u) << 4;
#endif
                    uint xw = act[xb + 8u * s + w4];
                    dotv += dot4(codes, xw);
                    xs += dot4(xw, 0x01010101u);
                }
                A += sc * dotv;
                B += mn * xs;
            }
            precise float dd = ldf16(bb) * dx;
            precise float dm = -(ldf16(bb + 2u) * dx);
            s_scale[lid] = dd;
            s_min[lid] = dm;
#else
            for (uint s = 0u; s < 16u; s++) {
                int sc = bitfieldExtract(int(ld8(bb + 192u + s)), 0, 8);
                int dotv = 0;
                for (uint w4 = 0u; w4 < 4u; w4++) {
                    uint i = 16u * s + 4u * w4, half_ = i / 128u, quarter = (i % 128u) / 32u, li = i % 32u;
                    uint low = (ld32(bb + 64u * half_ + 32u * (quarter & 1u) + li) >> (4u * (quarter >> 1))) & 0x0f0f0f0fu;
                    uint high = (ld32(bb + 128u + 32u * half_ + li) >> (2u * quarter)) & 0x03030303u;
                    dotv += dot4(centered(low | (high << 4), 6u), act[xb + 4u * s + w4]);
                }
                A += sc * dotv;
            }
            precise float dd = ldf16(bb + 208u) * dx;
            s_scale[lid] = dd;
            s_min[lid] = 0.0;
#endif
            s_a[lid] = A;
            s_b[lid] = B;
        }
        barrier();
        if (a == 0u) {
            for (uint i = 0u; i < 16u && b0 + i < nb; i++) {
                acc = fma1(s_scale[lid + i], float(s_a[lid + i]) * 256.0, acc);
#if defined(TYPE_Q4_K) || defined(TYPE_Q5_K)
                acc = fma1(s_min[lid + i], float(s_b[lid + i]) * 256.0, acc);
#endif
            }
        }
        barrier();
    }
    if (a == 0u && row < p.rows) store(row, t, acc);
}
#endif
