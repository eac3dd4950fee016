// bitsandbytes weights as transformers' save_pretrained writes them, multiplied in place.
//
// A bnb weight is several tensors (packed codes, block scales, code tables), so puna_matmul,
// puna_matmul_many and puna_lora_matmul_many1 take it as a pseudo-type whose `weights` pointer is
// a descriptor below instead of the rows themselves. The descriptor and everything it points to
// must outlive the calls.
#ifndef PUNA_BNB_H
#define PUNA_BNB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Pseudo-type ids, outside GGML's range (puna_type_table knows nothing of them).
enum {
    PUNA_TYPE_BNB4 = 200,      // NF4 or FP4 (the quant_map says which), weights = const puna_bnb4_weight *
    PUNA_TYPE_BNB_INT8 = 201,  // LLM.int8 row-scaled int8, weights = const puna_bnb_int8_weight *
};

// 4-bit: the weight [rows][cols] flattened row-major into elements e = r * cols + c, cut into
// blocks of `blocksize` elements (64 for everything transformers writes; cols must be a multiple of
// it, so no block straddles two rows). Element e's 4-bit code is the high nibble of packed[e / 2]
// when e is even, the low nibble when odd. Its value, as bitsandbytes' dequantize_4bit computes it
// in f32:
//   double quant (absmax_codes != NULL): absmax_b = nested_quant_map[absmax_codes[b]] * nested_absmax[b / nested_blocksize]
//                                         then absmax_b = absmax_b + nested_offset        (two f32 roundings)
//   otherwise:                            absmax_b = absmax[b]
//   w_e = quant_map[code_e] * absmax_{e / blocksize}                                       (f32)
typedef struct {
    const uint8_t *packed;            // rows * cols / 2 bytes
    const float *quant_map;           // 16 f32: the code book (NF4 or FP4)
    int64_t blocksize;                // elements per absmax
    const float *absmax;              // rows * cols / blocksize f32 (no double quant), else NULL
    const uint8_t *absmax_codes;      // rows * cols / blocksize u8 (double quant), else NULL
    const float *nested_quant_map;    // 256 f32 (double quant)
    const float *nested_absmax;       // ceil(blocks / nested_blocksize) f32 (double quant)
    int64_t nested_blocksize;         // 256 as transformers writes it
    float nested_offset;              // quant_state JSON "nested_offset"
} puna_bnb4_weight;

// 8-bit (LLM.int8 weights): w[r][c] = ((float)weight[r * cols + c] * row_scale[r]) * (1.0f / 127.0f),
// two f32 products in that order, as bitsandbytes' int8_vectorwise_dequant computes it (A * SCB, then
// times the f32 reciprocal of 127; checked bit for bit against its output). row_scale is "SCB".
typedef struct {
    const int8_t *weight;             // rows * cols
    const float *row_scale;           // rows
} puna_bnb_int8_weight;

// Exact f32 dequantization (the definitions above) of rows [r0, r1) into out ([r1 - r0][cols]).
// Return 0, or -1 on inconsistent arguments (cols not a multiple of the blocksize, a NULL table).
int puna_bnb4_dequantize_rows(const puna_bnb4_weight *w, int64_t cols, int64_t r0, int64_t r1, float *out);
int puna_bnb_int8_dequantize_rows(const puna_bnb_int8_weight *w, int64_t cols, int64_t r0, int64_t r1, float *out);

// absmax_b for blocks [b0, b0 + count) into out, as puna_bnb4_dequantize_rows computes it (double
// quantization decoded, same f32 roundings); the Vulkan backend stores these next to the codes. The
// caller keeps the range inside the matrix (the descriptor does not know its row count). Returns 0,
// or -1 on a NULL table, a negative range or a NULL out.
int puna_bnb4_block_absmax(const puna_bnb4_weight *w, int64_t b0, int64_t count, float *out);

// Whether a descriptor can be dequantized and multiplied with `cols` columns (0) or not (-1): the
// NULL checks and the blocksize rule above; the 4-bit check also wants a finite quant_map. The
// matmul entry points run these checks themselves and return -1 on failure. Quantized-activation
// kernels serve 4-bit blocksizes that are multiples of 32 and int8 rows of a multiple of 32
// columns; other shapes go through the f32 reference (dequantized rows).
int puna_bnb4_validate(const puna_bnb4_weight *w, int64_t cols);
int puna_bnb_int8_validate(const puna_bnb_int8_weight *w, int64_t cols);

#ifdef __cplusplus
}
#endif

#endif
