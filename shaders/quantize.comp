#version 450
#extension GL_GOOGLE_include_directive : require
// int8 tier: quantizes rows of activations to 8-bit blocks exactly as the CPU kernels do with one
// level (Sources/CPuna/kernels_internal.h): per block of BLOCK values (32, or 256 for the K-quant
// dots) amax = max |x|, id = 127 / amax (0 when amax = 0), q = clamp(roundEven(x * id), -127, 127),
// and the stored scale dx = amax / 127 / 256 (the CPU's, which folds the level's 256 in).
// Output per token (stride words): the q bytes, 4 to a word in element order, then one f32 dx per
// block. One invocation per 4 values, so a workgroup of 64 covers 256 values: one K block or 8 of 32.
#include "common.glsl"

layout(std430, binding = 0) readonly buffer X { float x[]; };
layout(std430, binding = 1) writeonly buffer Act { uint act[]; };

layout(push_constant, std430) uniform Params {
    uint cols, x_off, x_stride;   // in floats
    uint block;                   // 32 or 256
    uint stride;                  // words per token in act
} p;

shared float part_max[WORKGROUP_SIZE];

int level(float v, float id) {
    precise float r = roundEven(v * id);
    if (!(r >= -127.0)) return -127;   // nan as the CPU's round_clamp
    if (r > 127.0) return 127;
    return int(r);
}

void main() {
    uint lid = gl_LocalInvocationID.x;
    uint word = gl_WorkGroupID.x * WORKGROUP_SIZE + lid;
    uint t = gl_WorkGroupID.y;
    bool live = word < p.cols / 4u;
    uint xb = p.x_off + t * p.x_stride + 4u * word;
    vec4 v = live ? vec4(x[xb], x[xb + 1u], x[xb + 2u], x[xb + 3u]) : vec4(0.0);
    part_max[lid] = max(max(abs(v.x), abs(v.y)), max(abs(v.z), abs(v.w)));
    barrier();
    // The block's amax from its invocations' partial maxima (max is exact in any order).
    uint per = p.block / 4u;
    uint first = lid - lid % per;
    float amax = 0.0;
    for (uint i = 0u; i < per; i++) amax = max(amax, part_max[first + i]);
    if (!live) return;
    precise float id = amax > 0.0 ? 127.0 / amax : 0.0;
    uint packed = uint(level(v.x, id) & 255) | (uint(level(v.y, id) & 255) << 8) |
                  (uint(level(v.z, id) & 255) << 16) | (uint(level(v.w, id) & 255) << 24);
    uint base = t * p.stride;
    act[base + word] = packed;
    if (lid % per == 0u) {
        precise float dx = amax / 127.0 / 256.0;
        act[base + p.cols / 4u + (4u * word) / p.block] = floatBitsToUint(dx);
    }
}
