// Shared by every shader. Weights are read as a plain uint array (no 8/16-bit storage in the
// baseline tier), so GGML blocks whose size is only 2-byte aligned (Q4_0: 18 bytes, Q8_0: 34,
// Q6_K: 210) are read with the funnel-shift helpers below. Byte offsets passed to ld32/ld16 must
// be even; every field Puna reads sits at an even offset.

#ifdef FEATURE_SUBGROUP
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif

// Workgroup size comes from specialization constant 0 (the host picks it; must be a power of two
// for the shared-memory reduction).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WORKGROUP_SIZE = 64;

#ifdef WEIGHTS_BINDING
layout(std430, binding = WEIGHTS_BINDING) readonly buffer Weights { uint w[]; };

// 32 bits starting at an even byte offset.
uint ld32(uint b) {
    uint i = b >> 2;
    if ((b & 2u) == 0u) return w[i];
    return (w[i] >> 16) | (w[i + 1u] << 16);
}
uint ld16(uint b) {
    uint v = w[b >> 2];
    return (b & 2u) != 0u ? (v >> 16) : (v & 0xffffu);
}
uint ld8(uint b) { return (w[b >> 2] >> ((b & 3u) * 8u)) & 0xffu; }
float ldf16(uint b) { return unpackHalf2x16(ld16(b)).x; }
#endif

vec4 low_nibbles(uint q) { return vec4(q & 15u, (q >> 8) & 15u, (q >> 16) & 15u, (q >> 24) & 15u); }
vec4 high_nibbles(uint q) { return vec4((q >> 4) & 15u, (q >> 12) & 15u, (q >> 20) & 15u, q >> 28); }
vec4 signed_bytes(uint q) {
    int v = int(q);
    return vec4(bitfieldExtract(v, 0, 8), bitfieldExtract(v, 8, 8), bitfieldExtract(v, 16, 8), bitfieldExtract(v, 24, 8));
}

#ifdef WORKGROUP_REDUCE
// ---- workgroup sum ------------------------------------------------------------------------
// Baseline: a tree in shared memory (needs nothing but barriers). Feature tier: subgroupAdd, then
// one partial per subgroup in shared memory; no assumption about the subgroup size either way.
#ifdef FEATURE_SUBGROUP
shared float reduce_partials[64];   // enough for 64 subgroups (e.g. 256 invocations of 4)
float workgroup_sum(float v) {
    v = subgroupAdd(v);
    if (subgroupElect()) reduce_partials[gl_SubgroupID] = v;
    barrier();
    float total = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) total += reduce_partials[i];
    barrier();
    return total;
}
#else
shared float reduce_scratch[WORKGROUP_SIZE];
float workgroup_sum(float v) {
    uint lid = gl_LocalInvocationID.x;
    reduce_scratch[lid] = v;
    barrier();
    for (uint s = WORKGROUP_SIZE / 2u; s > 0u; s >>= 1) {
        if (lid < s) reduce_scratch[lid] += reduce_scratch[lid + s];
        barrier();
    }
    float total = reduce_scratch[0];
    barrier();
    return total;
}
#endif
#endif  // WORKGROUP_REDUCE
