#version 450
#extension GL_GOOGLE_include_directive : require
// Append the new tokens' keys and values at positions pos0.. of one layer's cache, as f32 or as
// f16 pairs packed into uints (no 16-bit storage needed). A layer that keeps a ring of rows
// (sliding window) stores position q in row q % ring.
#include "common.glsl"

layout(std430, binding = 0) readonly buffer K { float k[]; };
layout(std430, binding = 1) readonly buffer V { float v[]; };
layout(std430, binding = 2) writeonly buffer KC { uint kc[]; };
layout(std430, binding = 3) writeonly buffer VC { uint vc[]; };

layout(push_constant) uniform Params {
    uint n_tokens, kv_dim, pos0, f16;
    uint ring;   // 0: one row per position; > 0: rows in the ring
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;   // pair index within a row
    uint t = gl_GlobalInvocationID.y;
    if (2u * i >= p.kv_dim || t >= p.n_tokens) return;
    uint src = t * p.kv_dim + 2u * i;
    uint row = p.ring > 0u ? (p.pos0 + t) % p.ring : p.pos0 + t;
    if (p.f16 != 0u) {
        uint dst = (row * p.kv_dim) / 2u + i;
        kc[dst] = packHalf2x16(vec2(k[src], k[src + 1u]));
        vc[dst] = packHalf2x16(vec2(v[src], v[src + 1u]));
    } else {
        uint dst = row * p.kv_dim + 2u * i;
        kc[dst] = floatBitsToUint(k[src]); kc[dst + 1u] = floatBitsToUint(k[src + 1u]);
        vc[dst] = floatBitsToUint(v[src]); vc[dst + 1u] = floatBitsToUint(v[src + 1u]);
    }
}
