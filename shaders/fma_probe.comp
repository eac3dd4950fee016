#version 450
#extension GL_GOOGLE_include_directive : require
// int8 tier: v[3] = fma(v[0], v[1], v[2]) with inputs the host picks so that a fused fma and a
// multiply-then-add give different results; tells the host whether fma() is fused here.
#include "common.glsl"

layout(std430, binding = 0) buffer V { float v[]; };

void main() {
    if (gl_GlobalInvocationID.x == 0u) v[3] = fma(v[0], v[1], v[2]);
}
