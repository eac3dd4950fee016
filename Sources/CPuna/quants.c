// The type table and the scalar reference codecs of every GGML weight format Puna reads or writes.
// These are the bit-exact references the fast kernels are tested against.
#include "puna_quants.h"

#include <math.h>
#include <string.h>

float puna_f16_to_f32(puna_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal half: normalise
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

puna_f16 puna_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t abs = x & 0x7fffffffu;
    if (abs >= 0x7f800000u) return (puna_f16)(sign | 0x7c00 | (abs > 0x7f800000u ? 0x200 : 0));
    if (abs >= 0x477ff000u) return (puna_f16)(sign | 0x7c00);  // rounds to >= 65520: inf
    if (abs < 0x38800000u) {  // result is subnormal (or zero): round at the fixed 2^-24 step
        if (abs < 0x33000000u) return (puna_f16)sign;  // < 2^-25 rounds to zero
        uint32_t man = (abs & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(abs >> 23);  // value / 2^-24 = man * 2^(e - 126), e < 113
        uint32_t half_ulp = 1u << (shift - 1), q = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half_ulp || (rem == half_ulp && (q & 1))) q++;
        return (puna_f16)(sign | q);
    }
    uint32_t q = (abs - 0x38000000u) >> 13, rem = abs & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (puna_f16)(sign | q);
}

float puna_bf16_to_f32(puna_bf16 h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

puna_bf16 puna_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (puna_bf16)((x >> 16) | 64);  // quiet nan
    return (puna_bf16)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

#define ENTRY(id, nm, bs, ts, dec, enc) [id] = { nm, bs, ts, dec, enc }

const puna_type_info puna_type_table[PUNA_TYPE_COUNT] = {
    ENTRY(PUNA_TYPE_F32, "f32", 1, 4, NULL, NULL),
    ENTRY(PUNA_TYPE_F16, "f16", 1, 2, NULL, NULL),
    ENTRY(PUNA_TYPE_Q4_0, "q4_0", PUNA_QK, sizeof(puna_block_q4_0), NULL, NULL),
    ENTRY(PUNA_TYPE_Q4_1, "q4_1", PUNA_QK, sizeof(puna_block_q4_1), NULL, NULL),
    ENTRY(PUNA_TYPE_Q5_0, "q5_0", PUNA_QK, sizeof(puna_block_q5_0), NULL, NULL),
    ENTRY(PUNA_TYPE_Q5_1, "q5_1", PUNA_QK, sizeof(puna_block_q5_1), NULL, NULL),
    ENTRY(PUNA_TYPE_Q8_0, "q8_0", PUNA_QK, sizeof(puna_block_q8_0), NULL, NULL),
    ENTRY(PUNA_TYPE_Q8_1, "q8_1", PUNA_QK, sizeof(puna_block_q8_1), NULL, NULL),
    ENTRY(PUNA_TYPE_Q2_K, "q2_K", PUNA_QK_K, 84, NULL, NULL),
    ENTRY(PUNA_TYPE_Q3_K, "q3_K", PUNA_QK_K, 110, NULL, NULL),
    ENTRY(PUNA_TYPE_Q4_K, "q4_K", PUNA_QK_K, sizeof(puna_block_q4_K), NULL, NULL),
    ENTRY(PUNA_TYPE_Q5_K, "q5_K", PUNA_QK_K, sizeof(puna_block_q5_K), NULL, NULL),
    ENTRY(PUNA_TYPE_Q6_K, "q6_K", PUNA_QK_K, sizeof(puna_block_q6_K), NULL, NULL),
    ENTRY(PUNA_TYPE_Q8_K, "q8_K", PUNA_QK_K, sizeof(puna_block_q8_K), NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_XXS, "iq2_xxs", PUNA_QK_K, 66, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_XS, "iq2_xs", PUNA_QK_K, 74, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ3_XXS, "iq3_xxs", PUNA_QK_K, 98, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ1_S, "iq1_s", PUNA_QK_K, 50, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ4_NL, "iq4_nl", PUNA_QK, 18, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ3_S, "iq3_s", PUNA_QK_K, 110, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ2_S, "iq2_s", PUNA_QK_K, 82, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ4_XS, "iq4_xs", PUNA_QK_K, 136, NULL, NULL),
    ENTRY(PUNA_TYPE_I8, "i8", 1, 1, NULL, NULL),
    ENTRY(PUNA_TYPE_I16, "i16", 1, 2, NULL, NULL),
    ENTRY(PUNA_TYPE_I32, "i32", 1, 4, NULL, NULL),
    ENTRY(PUNA_TYPE_I64, "i64", 1, 8, NULL, NULL),
    ENTRY(PUNA_TYPE_F64, "f64", 1, 8, NULL, NULL),
    ENTRY(PUNA_TYPE_IQ1_M, "iq1_m", PUNA_QK_K, 56, NULL, NULL),
    ENTRY(PUNA_TYPE_BF16, "bf16", 1, 2, NULL, NULL),
    ENTRY(PUNA_TYPE_TQ1_0, "tq1_0", PUNA_QK_K, 54, NULL, NULL),
    ENTRY(PUNA_TYPE_TQ2_0, "tq2_0", PUNA_QK_K, 66, NULL, NULL),
    ENTRY(PUNA_TYPE_MXFP4, "mxfp4", PUNA_QK, 17, NULL, NULL),
};
