#version 450
#extension GL_GOOGLE_include_directive : require
// RoPE in place over n_heads heads of each token, over the first 2 * pairs dims of each head
// (partial rotary leaves the rest as they are). Pair j is (2j, 2j+1) in GGML's normal style
// (adjacent pairs) and (j, j + pairs) in the NEOX style (head halves), as puna_rope_ex pairs them.
// The host computes cos/sin per (token, pair) exactly as the CPU kernel does (frequency factors
// and LongRoPE's attention factor included), so angles match bit for bit and the GPU's own sin/cos
// precision on large angles never matters.
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Table { vec2 cs[]; };   // [n_tokens][pairs] (cos, sin)
layout(std430, binding = 1) buffer Vec { float v[]; };

layout(push_constant) uniform Params {
    uint n_tokens, n_heads, head_dim, pairs;   // pairs = rope_dims / 2
    uint stride;                               // floats per token row
    uint neox;                                 // 1: pairs (j, j + pairs); 0: (2j, 2j + 1)
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;          // over n_heads * pairs
    uint t = gl_GlobalInvocationID.y;
    if (i >= p.n_heads * p.pairs || t >= p.n_tokens) return;
    uint h = i / p.pairs, j = i % p.pairs;
    vec2 c = cs[t * p.pairs + j];
    uint b = t * p.stride + h * p.head_dim + (p.neox != 0u ? j : 2u * j);
    uint partner = b + (p.neox != 0u ? p.pairs : 1u);
    float x0 = v[b], x1 = v[partner];
    v[b] = x0 * c.x - x1 * c.y;
    v[partner] = x0 * c.y + x1 * c.x;
}
