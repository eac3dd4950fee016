#version 450
#extension GL_GOOGLE_include_directive : require
// out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight, one workgroup per token. The CPU sums squares
// in double; here it is f32 (shaderFloat64 is optional), a difference far below the tolerances.
#define WORKGROUP_REDUCE
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Weight { float weight[]; };
layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint n, x_off, out_off;   // n floats per token; offsets in floats
    float eps;
} p;

void main() {
    uint xb = p.x_off + gl_WorkGroupID.x * p.n, ob = p.out_off + gl_WorkGroupID.x * p.n;
    float s = 0.0;
    for (uint i = gl_LocalInvocationID.x; i < p.n; i += WORKGROUP_SIZE) s += x[xb + i] * x[xb + i];
    float scale = 1.0 / sqrt(workgroup_sum(s) / float(p.n) + p.eps);
    for (uint i = gl_LocalInvocationID.x; i < p.n; i += WORKGROUP_SIZE) o[ob + i] = (x[xb + i] * scale) * weight[i];
}
