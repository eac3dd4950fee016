#version 450
#extension GL_GOOGLE_include_directive : require
// Causal attention of one query head of one new token per workgroup over the GPU KV cache, with
// grouped-query heads (query head h reads KV head h / (n_heads / n_kv_heads)), optionally through
// a sliding window (a token sees only the last `window` positions, itself included) over a ring of
// rows (position q in row q % ring), as puna_attention_ex computes it on the CPU. Positions are
// visited in chunks of WORKGROUP_SIZE with an online softmax (running max, rescaled sums), so
// shared memory stays small for any context length: q (head_dim <= 256) plus two chunk arrays.
// Requires WORKGROUP_SIZE == 64 (4 output dimensions per invocation). The queries and the output
// start q_off / o_off floats into their buffers (one sequence's rows of a batched step).
#include "common.glsl"

layout(std430, binding = 0) readonly buffer Q { float q[]; };
layout(std430, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, binding = 3) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint n_tokens, pos0, n_heads, n_kv_heads;
    uint head_dim, kv_dim, format;   // format: 0 f32, 1 f16, 2 q8_0 (enum puna_vk_kv_format)
    float scale;   // 1 / sqrt(head_dim)
    uint window;   // 0: every position; > 0: the last `window` positions
    uint ring;     // 0: row = position; > 0: row = position % ring
    uint q_off, o_off;
} p;

const uint MAX_HEAD_DIM = 256u;
const uint DIMS = 4u;   // MAX_HEAD_DIM / 64
shared float qs[MAX_HEAD_DIM];
shared float probs[WORKGROUP_SIZE];
shared float red[WORKGROUP_SIZE];

// q8_0: element e of a layer is block e / 32 (34 bytes: f16 d, then 32 int8) at offset e % 32.
uint cache_half(uint word, uint byte_offset) { return (byte_offset & 2u) != 0u ? (word >> 16) : (word & 0xffffu); }
float key(uint e) {
    if (p.format == 1u) return unpackHalf2x16(kc[e >> 1])[e & 1u];
    if (p.format == 0u) return uintBitsToFloat(kc[e]);
    uint o = 34u * (e >> 5), qo = o + 2u + (e & 31u);
    float d = unpackHalf2x16(cache_half(kc[o >> 2], o)).x;
    return d * float(bitfieldExtract(int(kc[qo >> 2]), int((qo & 3u) * 8u), 8));
}
float value(uint e) {
    if (p.format == 1u) return unpackHalf2x16(vc[e >> 1])[e & 1u];
    if (p.format == 0u) return uintBitsToFloat(vc[e]);
    uint o = 34u * (e >> 5), qo = o + 2u + (e & 31u);
    float d = unpackHalf2x16(cache_half(vc[o >> 2], o)).x;
    return d * float(bitfieldExtract(int(vc[qo >> 2]), int((qo & 3u) * 8u), 8));
}
uint row(uint pos) { return p.ring > 0u ? pos % p.ring : pos; }

void main() {
    uint h = gl_WorkGroupID.x, t = gl_WorkGroupID.y, lid = gl_LocalInvocationID.x;
    uint kvh = h / (p.n_heads / p.n_kv_heads);
    uint qb = (t * p.n_heads + h) * p.head_dim;
    for (uint i = lid; i < p.head_dim; i += WORKGROUP_SIZE) qs[i] = q[p.q_off + qb + i];
    barrier();

    uint npos = p.pos0 + t + 1u;
    uint lo = p.window > 0u && npos > p.window ? npos - p.window : 0u;
    float m = -3.0e38, l = 0.0;
    float acc[DIMS];
    for (uint d = 0u; d < DIMS; d++) acc[d] = 0.0;

    for (uint base = lo; base < npos; base += WORKGROUP_SIZE) {
        uint pos = base + lid;
        float s = -3.0e38;
        if (pos < npos) {
            uint kb = row(pos) * p.kv_dim + kvh * p.head_dim;
            float dotp = 0.0;
            for (uint i = 0u; i < p.head_dim; i++) dotp += qs[i] * key(kb + i);
            s = dotp * p.scale;
        }
        red[lid] = s;
        barrier();
        for (uint w = WORKGROUP_SIZE / 2u; w > 0u; w >>= 1) {
            if (lid < w) red[lid] = max(red[lid], red[lid + w]);
            barrier();
        }
        float mNew = max(m, red[0]);
        float f = exp(m - mNew);
        float pr = pos < npos ? exp(s - mNew) : 0.0;
        probs[lid] = pr;
        l = l * f + pr;
        for (uint d = 0u; d < DIMS; d++) acc[d] *= f;
        m = mNew;
        barrier();
        uint count = min(WORKGROUP_SIZE, npos - base);
        for (uint d = 0u; d < DIMS; d++) {
            uint dim = lid + d * WORKGROUP_SIZE;
            if (dim >= p.head_dim) break;
            uint vb = kvh * p.head_dim + dim;
            uint r = row(base);
            float a = acc[d];
            for (uint j = 0u; j < count; j++) {
                a += probs[j] * value(r * p.kv_dim + vb);
                r++;
                if (r == p.ring) r = 0u;   // never true without a ring (ring = 0)
            }
            acc[d] = a;
        }
        barrier();
    }
    // Every invocation rescaled its partial sum by the same factors, so they add up directly.
    red[lid] = l;
    barrier();
    for (uint w = WORKGROUP_SIZE / 2u; w > 0u; w >>= 1) {
        if (lid < w) red[lid] += red[lid + w];
        barrier();
    }
    float total = red[0];
    for (uint d = 0u; d < DIMS; d++) {
        uint dim = lid + d * WORKGROUP_SIZE;
        if (dim < p.head_dim) o[p.o_off + qb + dim] = acc[d] / total;
    }
}
