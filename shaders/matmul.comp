#version 450
#extension GL_GOOGLE_include_directive : require
// Tiled y[t][r] = alpha * W[r] . x[t] (+ y) for prompts: each workgroup computes a 32-row x
// 32-token tile, staging 32 columns of dequantized weights and of inputs in shared memory at a
// time (2 x 32 x 33 floats = 8.4 KiB, inside the baseline's 16 KiB). 64 invocations, 4 x 4
// outputs each. Same parameters as matvec.comp.
#define WEIGHTS_BINDING 0
#include "common.glsl"
#include "dequant.glsl"

layout(std430, binding = 1) readonly buffer X { float x[]; };
layout(std430, binding = 2) buffer Y { float y[]; };

layout(push_constant, std430) uniform Params {
    uint rows, cols, row_bytes, w_off;
    uint x_off, y_off, x_stride, y_stride;
    uint n_tokens;
    uint accumulate;
    float alpha;
    float code_table[16];                // TYPE_BNB4: the quant_map (dequant_init)
} p;

const uint TILE = 32u;

#ifdef ONE_TOKEN
// One token per grid row (gl_WorkGroupID.y), 64 rows per workgroup, one row per invocation: the
// tiled variant's arithmetic for each output — the same weights and inputs staged in 32-column
// tiles (zeros past cols), summed over k in the same order, acc += w * x — so the same bits, without
// computing 31 idle token columns. The host takes it for single-token steps that must match the
// tiled shader bit for bit (PUNA_VK_MATMUL_ROW_INDEPENDENT).
const uint ROWS1 = 64u;
shared float wt[ROWS1][TILE + 1u];  // [row][k]
shared float xt[TILE];

void main() {
    // Requires WORKGROUP_SIZE == 64 (the host specializes it so).
    dequant_init(p.code_table);
    uint lid = gl_LocalInvocationID.x;
    uint row0 = gl_WorkGroupID.x * ROWS1, t = gl_WorkGroupID.y;
    float acc = 0.0;
    for (uint k = 0u; k < p.cols; k += TILE) {
        for (uint c = lid; c < ROWS1 * 4u; c += 64u) {
            uint r = c >> 2, kk = (c & 3u) * 8u;
            vec4 lo = vec4(0.0), hi = vec4(0.0);
            if (row0 + r < p.rows && k + kk < p.cols) dequant8(p.w_off + (row0 + r) * p.row_bytes, k + kk, lo, hi);
            wt[r][kk] = lo.x; wt[r][kk + 1u] = lo.y; wt[r][kk + 2u] = lo.z; wt[r][kk + 3u] = lo.w;
            wt[r][kk + 4u] = hi.x; wt[r][kk + 5u] = hi.y; wt[r][kk + 6u] = hi.z; wt[r][kk + 7u] = hi.w;
        }
        if (lid < TILE) xt[lid] = t < p.n_tokens && k + lid < p.cols ? x[p.x_off + t * p.x_stride + k + lid] : 0.0;
        barrier();
        for (uint kk = 0u; kk < TILE; kk++) acc += wt[lid][kk] * xt[kk];
        barrier();
    }
    uint r = row0 + lid;
    if (r < p.rows && t < p.n_tokens) {
        uint yi = p.y_off + t * p.y_stride + r;
        float v = p.alpha * acc;
        y[yi] = p.accumulate != 0u ? y[yi] + v : v;
    }
}
#else
shared float wt[TILE][TILE + 1u];   // [row][k]; +1 breaks bank conflicts on column reads
shared float xt[TILE][TILE + 1u];   // [token][k]

void main() {
    // Requires WORKGROUP_SIZE == 64 (the host specializes it so).
    dequant_init(p.code_table);
    uint lid = gl_LocalInvocationID.x;
    uint row0 = gl_WorkGroupID.x * TILE, tok0 = gl_WorkGroupID.y * TILE;
    uint ty = lid >> 3, tx = lid & 7u;   // rows 4*ty.., tokens 4*tx..
    float acc[4][4];
    for (uint i = 0u; i < 4u; i++) for (uint j = 0u; j < 4u; j++) acc[i][j] = 0.0;

    for (uint k = 0u; k < p.cols; k += TILE) {
        // 32 rows x 4 chunks of 8 weights: two chunks per invocation.
        for (uint c = lid; c < TILE * 4u; c += 64u) {
            uint r = c >> 2, kk = (c & 3u) * 8u;
            vec4 lo = vec4(0.0), hi = vec4(0.0);
            // cols is a multiple of 8 (32 for block types), so a chunk is wholly in or out.
            if (row0 + r < p.rows && k + kk < p.cols) dequant8(p.w_off + (row0 + r) * p.row_bytes, k + kk, lo, hi);
            wt[r][kk] = lo.x; wt[r][kk + 1u] = lo.y; wt[r][kk + 2u] = lo.z; wt[r][kk + 3u] = lo.w;
            wt[r][kk + 4u] = hi.x; wt[r][kk + 5u] = hi.y; wt[r][kk + 6u] = hi.z; wt[r][kk + 7u] = hi.w;
        }
        for (uint c = lid; c < TILE * TILE; c += 64u) {
            uint t = c >> 5, kk = c & 31u;
            xt[t][kk] = tok0 + t < p.n_tokens && k + kk < p.cols ? x[p.x_off + (tok0 + t) * p.x_stride + k + kk] : 0.0;
        }
        barrier();
        for (uint kk = 0u; kk < TILE; kk++) {
            vec4 a = vec4(wt[4u * ty][kk], wt[4u * ty + 1u][kk], wt[4u * ty + 2u][kk], wt[4u * ty + 3u][kk]);
            vec4 b = vec4(xt[4u * tx][kk], xt[4u * tx + 1u][kk], xt[4u * tx + 2u][kk], xt[4u * tx + 3u][kk]);
            for (uint i = 0u; i < 4u; i++) for (uint j = 0u; j < 4u; j++) acc[i][j] += a[i] * b[j];
        }
        barrier();
    }
    for (uint i = 0u; i < 4u; i++) {
        uint r = row0 + 4u * ty + i;
        if (r >= p.rows) continue;
        for (uint j = 0u; j < 4u; j++) {
            uint t = tok0 + 4u * tx + j;
            if (t >= p.n_tokens) continue;
            uint yi = p.y_off + t * p.y_stride + r;
            float v = p.alpha * acc[i][j];
            y[yi] = p.accumulate != 0u ? y[yi] + v : v;
        }
    }
}
#endif
