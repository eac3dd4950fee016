// The GPU layout of bitsandbytes weights: declared once here, for vulkan.c (which repacks a
// puna_bnb.h descriptor into it at upload) and for shaders/dequant.glsl (scripts/compile-shaders
// passes -I Sources/CPunaVulkan). Only #defines, so the file is C and GLSL alike.
//
// A bitsandbytes matrix is several tensors (codes, block scales, code tables, nested scales); the
// shaders read one buffer of whole rows, so each row is repacked into self-contained blocks (all
// fields 4-byte aligned: the baseline tier reads 32-bit words only):
//
// 4-bit, NF4 or FP4 (PUNA_TYPE_BNB4): a row is cols / 64 blocks of PUNA_VK_BNB4_BLOCK_BYTES bytes:
//   PUNA_VK_BNB4_ABSMAX  f32 absmax of the block, as puna_bnb4_block_absmax gives it: with double
//                        quantization decoded at upload (nested_quant_map[code] * nested_absmax
//                        + nested_offset, rounded as the CPU rounds it), so every variant reads alike
//   PUNA_VK_BNB4_CODES   the block's 64 codes as the file packs them: element 2i in the high nibble
//                        of byte i, element 2i + 1 in the low nibble
//   w = quant_map[code] * absmax. The matrix's 16-entry quant_map is not in the buffer: it comes
//   with each dispatch in the push constants (puna_vk_matmul's code_table).
//   4.5 bits per weight: the same bytes as an f32-absmax file, 2.98 bytes per 64 weights more than
//   a double-quantized one (1 byte per block + 4 per 256 blocks there).
//
// 8-bit, LLM.int8 (PUNA_TYPE_BNB_INT8): a row is its f32 SCB row scale at PUNA_VK_BNB_INT8_SCALE,
//   then its cols int8 values from PUNA_VK_BNB_INT8_VALUES: w = (q * SCB) * (1 / 127), the file's
//   own bytes (cols + 4 per row).
#ifndef PUNA_VK_BNB_LAYOUT_H
#define PUNA_VK_BNB_LAYOUT_H

#define PUNA_VK_BNB4_BLOCK 64u          // weights per block (what transformers writes)
#define PUNA_VK_BNB4_ABSMAX 0u          // byte offsets within a block
#define PUNA_VK_BNB4_CODES 4u
#define PUNA_VK_BNB4_BLOCK_BYTES 36u    // 4 + 64 / 2

#define PUNA_VK_BNB_INT8_SCALE 0u       // byte offsets within a row
#define PUNA_VK_BNB_INT8_VALUES 4u

#endif
