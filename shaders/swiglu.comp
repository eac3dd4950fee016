#version 450
#extension GL_GOOGLE_include_directive : require
// gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)).
#include "common.glsl"

layout(std430, binding = 0) buffer Gate { float g[]; };
layout(std430, binding = 1) readonly buffer Up { float u[]; };

layout(push_constant) uniform Params { uint n; } p;

void main() {
    uint i = gl_GlobalInvocationID.x + gl_GlobalInvocationID.y * gl_NumWorkGroups.x * WORKGROUP_SIZE;
    if (i >= p.n) return;
    float x = g[i];
    g[i] = x / (1.0 + exp(-x)) * u[i];
}
