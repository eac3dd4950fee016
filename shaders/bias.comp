#version 450
#extension GL_GOOGLE_include_directive : require
// y[t][i] += b[i] for i < n, t < n_tokens: a matrix's bias (Qwen2's Q/K/V), added after the
// product and the LoRA updates as Linear.forward adds it on the CPU.
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Bias { float b[]; };
layout(std430, binding = 1) buffer Y { float y[]; };

layout(push_constant) uniform Params { uint n, n_tokens; } p;

void main() {
    uint i = gl_GlobalInvocationID.x, t = gl_GlobalInvocationID.y;
    if (i >= p.n || t >= p.n_tokens) return;
    y[t * p.n + i] += b[i];
}
