#version 450
#extension GL_GOOGLE_include_directive : require
// y[t][r] = alpha * W[r] . x[t] (+ y[t][r] when accumulate), for one token column t per
// workgroup row of the grid: the decode path (n_tokens small). Each workgroup owns ROWS rows; its
// invocations stride over the row in chunks of 8 weights and reduce at the end. accumulate folds
// the residual add (and LoRA's B pass) into the product.
#define WEIGHTS_BINDING 0
#define WORKGROUP_REDUCE
#include "common.glsl"
#include "dequant.glsl"

#if defined(FEATURE_FP16) && defined(TYPE_F16)
// fp16 tier, F16 weights: read as halves through 16-bit storage (8 in two aligned loads instead of
// four 32-bit words split in two), then the f32 arithmetic of the other tiers, so the same sums.
// f16 products are not used: with the activations rounded to f16 they cost about 5e-4 of a
// product's size, which took the F16 fixtures past the 2e-3 F16 figure.
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
layout(std430, binding = 0) readonly buffer Weights16 { f16vec4 w16[]; };
#define FP16_F16_WEIGHTS
#endif

layout(constant_id = 1) const uint ROWS = 2;

layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer Y { float y[]; };

layout(push_constant, std430) uniform Params {
    uint rows, cols, row_bytes, w_off;   // w_off: byte offset of row 0 in the weights binding
    uint x_off, y_off, x_stride, y_stride; // in floats
    uint groups_x;                       // workgroups per grid row (large matrices use a 2D grid)
    uint accumulate;
    float alpha;
    float code_table[16];                // TYPE_BNB4: the quant_map (dequant_init)
} p;

void main() {
    dequant_init(p.code_table);   // before the early return: it may hold a barrier
    uint group = gl_WorkGroupID.x + gl_WorkGroupID.y * p.groups_x;
    uint row0 = group * ROWS;
    if (row0 >= p.rows) return;   // uniform per workgroup: no barrier is skipped by part of it
    uint t = gl_WorkGroupID.z;
    uint xb = p.x_off + t * p.x_stride;
    float acc[ROWS];
    for (uint r = 0u; r < ROWS; r++) acc[r] = 0.0;
    for (uint c = gl_LocalInvocationID.x; c < p.cols / 8u; c += WORKGROUP_SIZE) {
        uint k0 = 8u * c;
        vec4 xlo = vec4(x[xb + k0], x[xb + k0 + 1u], x[xb + k0 + 2u], x[xb + k0 + 3u]);
        vec4 xhi = vec4(x[xb + k0 + 4u], x[xb + k0 + 5u], x[xb + k0 + 6u], x[xb + k0 + 7u]);
        for (uint r = 0u; r < ROWS; r++) {
            uint row = min(row0 + r, p.rows - 1u);
#ifdef FP16_F16_WEIGHTS
            // w_off and row_bytes are multiples of 8 bytes here (F16 rows of a multiple of 8).
            uint i4 = (p.w_off + row * p.row_bytes) / 8u + 2u * c;
            acc[r] += dot(vec4(w16[i4]), xlo) + dot(vec4(w16[i4 + 1u]), xhi);
#else
            vec4 lo, hi;
            dequant8(p.w_off + row * p.row_bytes, k0, lo, hi);
            acc[r] += dot(lo, xlo) + dot(hi, xhi);
#endif
        }
    }
    for (uint r = 0u; r < ROWS; r++) {
        float total = workgroup_sum(acc[r]);
        if (gl_LocalInvocationID.x == 0u && row0 + r < p.rows) {
            uint yi = p.y_off + t * p.y_stride + row0 + r;
            float v = p.alpha * total;
            y[yi] = p.accumulate != 0u ? y[yi] + v : v;
        }
    }
}
