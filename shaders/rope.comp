#version 450
#extension GL_GOOGLE_include_directive : require
// RoPE (GGML "normal" mode: adjacent pairs) in place over n_heads heads of each token. The host
// computes cos/sin per (token, pair) exactly as the CPU kernel does, so angles match bit for bit
// and the GPU's own sin/cos precision on large angles never matters.
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Table { vec2 cs[]; };   // [n_tokens][pairs] (cos, sin)
layout(std430, binding = 1) buffer Vec { float v[]; };

layout(push_constant) uniform Params {
    uint n_tokens, n_heads, head_dim, pairs;   // pairs = rope_dims / 2
    uint stride;                               // floats per token row
} p;

void main() {
    uint i = gl_GlobalInvocationID.x;          // over n_heads * pairs
    uint t = gl_GlobalInvocationID.y;
    if (i >= p.n_heads * p.pairs || t >= p.n_tokens) return;
    uint h = i / p.pairs, j = i % p.pairs;
    vec2 c = cs[t * p.pairs + j];
    uint b = t * p.stride + h * p.head_dim + 2u * j;
    float x0 = v[b], x1 = v[b + 1u];
    v[b] = x0 * c.x - x1 * c.y;
    v[b + 1u] = x0 * c.y + x1 * c.x;
}
