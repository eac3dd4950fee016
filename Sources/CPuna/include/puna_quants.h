// Block layouts of the GGML weight formats, declared once. Every size, decoder, encoder and kernel
// derives from these structs and from the type table below (puna_type_table in quants.c).
#ifndef PUNA_QUANTS_H
#define PUNA_QUANTS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PUNA_QK 32     // weights per block of the simple quants (Q4_0 … Q8_0)
#define PUNA_QK_K 256  // weights per super-block of the K-quants
#define PUNA_K_SCALE_BYTES 12  // packed 6-bit scales and mins of Q4_K/Q5_K

typedef uint16_t puna_f16;   // IEEE half, stored raw
typedef uint16_t puna_bf16;  // bfloat16, stored raw

// y = d * q, q in [-128, 127]
typedef struct { puna_f16 d; int8_t qs[PUNA_QK]; } puna_block_q8_0;
// y = d * (q - 8), q in [0, 15]; low nibbles hold weights 0..15, high nibbles 16..31
typedef struct { puna_f16 d; uint8_t qs[PUNA_QK / 2]; } puna_block_q4_0;
// y = d * q + m, q in [0, 15]
typedef struct { puna_f16 d; puna_f16 m; uint8_t qs[PUNA_QK / 2]; } puna_block_q4_1;
// y = d * (q - 16), q in [0, 31]; qh holds bit 4 of each weight
typedef struct { puna_f16 d; uint8_t qh[4]; uint8_t qs[PUNA_QK / 2]; } puna_block_q5_0;
// y = d * q + m, q in [0, 31]
typedef struct { puna_f16 d; puna_f16 m; uint8_t qh[4]; uint8_t qs[PUNA_QK / 2]; } puna_block_q5_1;
// activations for the 8-bit dot products: d and s = d * sum(q)
typedef struct { puna_f16 d; puna_f16 s; int8_t qs[PUNA_QK]; } puna_block_q8_1;

// 8 sub-blocks of 32: y = d * sc * q - dmin * m, sc/m 6-bit packed in scales, q in [0, 15]
typedef struct { puna_f16 d; puna_f16 dmin; uint8_t scales[PUNA_K_SCALE_BYTES]; uint8_t qs[PUNA_QK_K / 2]; } puna_block_q4_K;
// as Q4_K with a fifth bit per weight in qh, q in [0, 31]
typedef struct { puna_f16 d; puna_f16 dmin; uint8_t scales[PUNA_K_SCALE_BYTES]; uint8_t qh[PUNA_QK_K / 8]; uint8_t qs[PUNA_QK_K / 2]; } puna_block_q5_K;
// 16 sub-blocks of 16: y = d * sc * (q - 32), q in [0, 63] split into 4 low bits (ql) and 2 high bits (qh)
typedef struct { uint8_t ql[PUNA_QK_K / 2]; uint8_t qh[PUNA_QK_K / 4]; int8_t scales[PUNA_QK_K / 16]; puna_f16 d; } puna_block_q6_K;
// activations for the K-quant dot products
typedef struct { float d; int8_t qs[PUNA_QK_K]; int16_t bsums[PUNA_QK_K / 16]; } puna_block_q8_K;

// GGML type ids as stored in GGUF tensor infos.
enum puna_type {
    PUNA_TYPE_F32 = 0, PUNA_TYPE_F16 = 1, PUNA_TYPE_Q4_0 = 2, PUNA_TYPE_Q4_1 = 3,
    PUNA_TYPE_Q5_0 = 6, PUNA_TYPE_Q5_1 = 7, PUNA_TYPE_Q8_0 = 8, PUNA_TYPE_Q8_1 = 9,
    PUNA_TYPE_Q2_K = 10, PUNA_TYPE_Q3_K = 11, PUNA_TYPE_Q4_K = 12, PUNA_TYPE_Q5_K = 13,
    PUNA_TYPE_Q6_K = 14, PUNA_TYPE_Q8_K = 15, PUNA_TYPE_IQ2_XXS = 16, PUNA_TYPE_IQ2_XS = 17,
    PUNA_TYPE_IQ3_XXS = 18, PUNA_TYPE_IQ1_S = 19, PUNA_TYPE_IQ4_NL = 20, PUNA_TYPE_IQ3_S = 21,
    PUNA_TYPE_IQ2_S = 22, PUNA_TYPE_IQ4_XS = 23, PUNA_TYPE_I8 = 24, PUNA_TYPE_I16 = 25,
    PUNA_TYPE_I32 = 26, PUNA_TYPE_I64 = 27, PUNA_TYPE_F64 = 28, PUNA_TYPE_IQ1_M = 29,
    PUNA_TYPE_BF16 = 30, PUNA_TYPE_TQ1_0 = 34, PUNA_TYPE_TQ2_0 = 35, PUNA_TYPE_MXFP4 = 39,
    PUNA_TYPE_COUNT = 40
};

// Decode n weights (n a multiple of block_size) from packed blocks to f32.
typedef void (*puna_decode_fn)(const void *blocks, float *out, int64_t n);
// Encode n floats (n a multiple of block_size) into packed blocks.
typedef void (*puna_encode_fn)(const float *in, void *blocks, int64_t n);

typedef struct {
    const char *name;        // GGML's name, e.g. "q4_K"; NULL for ids GGML never assigned
    int32_t block_size;      // weights per block
    int32_t type_size;       // bytes per block
    puna_decode_fn decode;   // NULL when Puna cannot decode the type
    puna_encode_fn encode;   // NULL when Puna cannot encode the type
} puna_type_info;

// Indexed by enum puna_type; entries GGML never assigned have name == NULL.
extern const puna_type_info puna_type_table[PUNA_TYPE_COUNT];

// Half/bfloat conversions, exact (round to nearest even on the way down).
float puna_f16_to_f32(puna_f16 h);
puna_f16 puna_f32_to_f16(float f);
float puna_bf16_to_f32(puna_bf16 h);
puna_bf16 puna_f32_to_bf16(float f);

#ifdef __cplusplus
}
#endif
#endif
