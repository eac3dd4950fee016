// Puna's Vulkan compute layer: a small C API over Vulkan for the model code in Swift.
//
// libvulkan.so.1 is opened with dlopen at run time (the build declares the Vulkan types itself, in
// vk_api.h, and links nothing), so every puna binary carries the backend, and on a machine without
// Vulkan it still runs on the CPU and can say why the GPU is not used. Nothing here exposes a Vulkan type: Swift sees plain
// C integers, pointers and the opaque context.
//
// Model flow: puna_vk_create picks a device and a shader tier; weights go up once with
// puna_vk_upload_matrix (zero-copy import of the memory-mapped file where the driver allows it);
// each forward pass records ops between puna_vk_begin and puna_vk_submit — one queue submission,
// waited on with a timeout — and reads results from host-visible buffers.
#ifndef PUNA_VULKAN_H
#define PUNA_VULKAN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- loader and devices ------------------------------------------------------------------------
// Open libvulkan and create the instance (once; later calls return the first result). 1 on
// success; 0 with a reason in puna_vk_load_error().
int puna_vk_load(void);
const char *puna_vk_load_error(void);

enum puna_vk_device_type {
    PUNA_VK_DEVICE_OTHER = 0, PUNA_VK_DEVICE_INTEGRATED = 1, PUNA_VK_DEVICE_DISCRETE = 2,
    PUNA_VK_DEVICE_VIRTUAL = 3, PUNA_VK_DEVICE_CPU = 4,
};

#define PUNA_VK_MAX_HEAPS 16
typedef struct {
    char name[256];
    int type;                        // enum puna_vk_device_type
    uint32_t api_version;            // VK_MAKE_API_VERSION layout: major << 22 | minor << 12 | patch
    uint32_t driver_version, vendor_id, device_id;
    uint32_t heap_count;
    uint64_t heap_size[PUNA_VK_MAX_HEAPS];
    int heap_device_local[PUNA_VK_MAX_HEAPS];
    uint32_t subgroup_size;
    int subgroup_arithmetic;         // subgroup arithmetic ops in compute shaders
    int shader_float16, shader_int8, shader_float64;
    int integer_dot_product;         // VK_KHR_shader_integer_dot_product listed and its feature on
    int integer_dot_product_accelerated;  // the packed signed 4x8 form is fast (not emulated)
    int storage_buffer_16bit, storage_buffer_8bit;
    int external_memory_host;        // VK_EXT_external_memory_host
    uint32_t max_shared_memory, max_workgroup_invocations, max_push_constants;
    uint64_t max_storage_buffer_range, max_allocation_size;
    int usable;                      // Vulkan >= 1.1 with a compute queue: Puna can run on it
} puna_vk_device_info;

// Number of physical devices (0 when none or not loaded).
int puna_vk_device_count(void);
// Fills *out for device `index`; 0 on success, -1 for a bad index.
int puna_vk_device_query(int index, puna_vk_device_info *out);
// "integrated", "discrete", "virtual", "cpu", "other".
const char *puna_vk_device_type_name(int type);

// ---- context -----------------------------------------------------------------------------------
typedef struct puna_vk puna_vk;

// Shader tiers, each including the ones below it (a tier's shaders replace the lower tier's of the
// same name; the rest come from below):
//   baseline  Vulkan 1.1 core only;
//   subgroup  + subgroup arithmetic in compute shaders (reductions);
//   fp16      + storageBuffer16BitAccess: F16 weights in the matrix x vector shader are read as
//             halves, the arithmetic stays f32 (the subgroup tier's sums, bit for bit; f16
//             products were measured past the F16 tolerance);
//   int8      + VK_KHR_shader_integer_dot_product: quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//             Q4_K, Q5_K, Q6_K) multiply activations quantized on the GPU to 8-bit blocks as the
//             CPU kernels quantize them (kernels_internal.h, one level), with the same integer
//             sums and float steps, so the products are the CPU kernels' bits on drivers with
//             correctly rounded division and fused fma. Other types keep the subgroup shaders, and
//             so do all types while the process asks for two activation levels.
enum puna_vk_tier {
    PUNA_VK_TIER_BASELINE = 0, PUNA_VK_TIER_SUBGROUP = 1, PUNA_VK_TIER_FP16 = 2, PUNA_VK_TIER_INT8 = 3, PUNA_VK_TIER_COUNT = 4
};

// "baseline", "subgroup", "fp16", "int8"; NULL outside the enum.
const char *puna_vk_tier_name(int tier);
// The tier named `name`, or -1.
int puna_vk_tier_from_name(const char *name);
// 1 when the device has every feature `tier` needs; else 0 with the missing ones, comma-separated,
// in `missing` (may be NULL).
int puna_vk_tier_supported(const puna_vk_device_info *info, int tier, char *missing, size_t missing_len);
// The highest tier the device supports, int8 only where the packed 4x8 dot product is
// accelerated (what puna_vk_create picks when nothing is forced).
int puna_vk_best_tier(const puna_vk_device_info *info);

// device_index < 0 picks the best usable device (discrete, then integrated, virtual, CPU).
// tier < 0 picks the tier from the environment: PUNA_VK_TIER=baseline|subgroup|fp16|int8, else
// PUNA_VK_BASELINE=1 for baseline, else puna_vk_best_tier; tier >= 0 forces that tier.
// A forced tier the device lacks, or an unknown PUNA_VK_TIER, fails with the reason.
// NULL on failure with the reason in err.
puna_vk *puna_vk_create(int device_index, int tier, char *err, size_t err_len);
void puna_vk_destroy(puna_vk *vk);
int puna_vk_device_index(const puna_vk *vk);
const puna_vk_device_info *puna_vk_info(const puna_vk *vk);
int puna_vk_tier(const puna_vk *vk);
// How the int8 tier's shaders get the CPU's fused fmaf (a probe at creation checks whether fma()
// is fused on this driver): PUNA_VK_FMA_FUSED, PUNA_VK_FMA_F64 (not fused: computed in double,
// which needs shaderFloat64), PUNA_VK_FMA_UNFUSED (neither: results within f32 rounding of the
// CPU's, not its bits); -1 below the int8 tier.
enum puna_vk_fma { PUNA_VK_FMA_UNFUSED = 0, PUNA_VK_FMA_FUSED = 1, PUNA_VK_FMA_F64 = 2 };
int puna_vk_int8_fma(const puna_vk *vk);
// Dispatches recorded so far with the shader variants whose name starts with `prefix` (e.g.
// "matmul1_" or "matvec_"): how tests tell which path a step took.
uint64_t puna_vk_dispatches(const puna_vk *vk, const char *prefix);
// The first error since creation ("" when none). Ops record errors here; submit returns them.
const char *puna_vk_error(const puna_vk *vk);
// 1 after a submission outlived the timeout. The device may still read the buffers then, so
// destroy leaves its Vulkan objects alone and callers must keep imported host memory mapped; and
// the process, when it exits, exits with status 1 before library destructors run.
int puna_vk_hung(const puna_vk *vk);

// ---- memory ------------------------------------------------------------------------------------
// A range of one of the context's Vulkan buffers.
typedef struct {
    uint32_t arena;
    uint32_t flags;
    uint64_t offset;
    uint64_t size;
} puna_vk_buffer;

enum puna_vk_memory {
    PUNA_VK_MEMORY_DEVICE = 0,   // device-local on discrete GPUs; host-visible on UMA devices
    PUNA_VK_MEMORY_HOST = 1,     // host-visible and coherent: inputs and read-back
};

// Allocates `bytes` (dedicated: its own allocation, which puna_vk_free releases; otherwise carved
// from a shared block that lives as long as the context). 0 on success.
int puna_vk_alloc(puna_vk *vk, uint64_t bytes, int memory, int dedicated, puna_vk_buffer *out);
void puna_vk_free(puna_vk *vk, puna_vk_buffer buffer);
// Host address of a host-visible buffer, else NULL.
void *puna_vk_host_pointer(puna_vk *vk, puna_vk_buffer buffer);
// Copies host bytes into a buffer (directly when mapped, else through a staging buffer). 0 on success.
int puna_vk_write(puna_vk *vk, puna_vk_buffer dst, uint64_t offset, const void *src, uint64_t bytes);

// Offers a host range (e.g. a whole memory-mapped model file, page-aligned) for zero-copy use
// through VK_EXT_external_memory_host. Returns 1 when imported, 0 when not (no extension, a
// discrete GPU, disabled by PUNA_VK_NO_IMPORT=1, or the driver refused); never fatal.
int puna_vk_import_host(puna_vk *vk, const void *ptr, uint64_t bytes);

// Whether the shaders read GGML type `type` as stored (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K).
int puna_vk_native_type(int type);
// Makes a weight matrix of `rows` x `cols` of GGML type `type` available to the GPU: native types
// are used as stored (zero-copy inside an imported range, else copied); bitsandbytes weights
// (PUNA_TYPE_BNB4 / PUNA_TYPE_BNB_INT8, `data` being their puna_bnb.h descriptor) are repacked into
// the layout of bnb_layout.h (always a copy: 4.5 bits per 4-bit weight, cols + 4 bytes per int8
// row) and keep their type; others are decoded and re-encoded as F16 (BF16 and wider as F32).
// *gpu_type gets the type the shaders will read and *zero_copy whether no copy was made. cols must
// be a multiple of 32 (of 8 for F32/F16, of 64 for 4-bit bitsandbytes). 0 on success.
int puna_vk_upload_matrix(puna_vk *vk, int type, const void *data, int64_t rows, int64_t cols,
                          puna_vk_buffer *out, int *gpu_type, int *zero_copy);
// Bytes of GGML type `type` for rows x cols as the GPU holds them (0 when cols is not a whole
// number of blocks); for the bitsandbytes pseudo-types, their GPU layout (bnb_layout.h).
uint64_t puna_vk_matrix_bytes(int type, int64_t rows, int64_t cols);

// Largest range one shader binding may cover on this device.
uint64_t puna_vk_max_binding_bytes(const puna_vk *vk);

// ---- recording ---------------------------------------------------------------------------------
// All ops between begin and submit go into one command buffer with a barrier after each; submit
// sends it and waits (PUNA_VK_TIMEOUT_S seconds, default 600, so a hung driver becomes an error).
// Offsets and strides are in floats. Returns 0, or -1 with puna_vk_error set.
int puna_vk_begin(puna_vk *vk);
int puna_vk_submit(puna_vk *vk);

void puna_vk_copy(puna_vk *vk, puna_vk_buffer src, uint64_t src_offset_bytes, puna_vk_buffer dst,
                  uint64_t dst_offset_bytes, uint64_t bytes);
// puna_vk_matmul's flags: ACCUMULATE adds the product to y; ROW_INDEPENDENT computes one token
// with the tiled shader's sums too (its one-token variant, matmul1; by default one token takes the
// matrix x vector shader, whose sums run in another order), so each token's row is the same bits
// however many tokens share the dispatch: a sequence of a batched step then gets the logits it gets
// in any other step composition.
enum puna_vk_matmul_flags { PUNA_VK_MATMUL_ACCUMULATE = 1, PUNA_VK_MATMUL_ROW_INDEPENDENT = 2 };
// y[t][r] = alpha * W[r] . x[t] (+ y[t][r] with PUNA_VK_MATMUL_ACCUMULATE) for t < n_tokens,
// r < rows. W is a matrix from puna_vk_upload_matrix (gpu_type) or any buffer holding rows of that
// type. code_table: for PUNA_TYPE_BNB4 the matrix's 16-entry quant_map (its descriptor's), sent
// with the dispatch; ignored (may be NULL) for every other type.
void puna_vk_matmul(puna_vk *vk, int gpu_type, puna_vk_buffer w, const float *code_table, uint32_t rows,
                    uint32_t cols, puna_vk_buffer x, uint32_t x_offset, puna_vk_buffer y, uint32_t y_offset,
                    uint32_t n_tokens, float alpha, int flags);
// out[t] = rmsnorm(x[t]) * weight over n floats per row, for n_tokens rows (tokens, or heads of
// tokens for per-head norms; x and out may be the same buffer).
void puna_vk_rmsnorm(puna_vk *vk, puna_vk_buffer weight, puna_vk_buffer x, uint32_t x_offset,
                     puna_vk_buffer out, uint32_t out_offset, uint32_t n, uint32_t n_tokens, float eps);
// In-place RoPE of n_tokens rows of n_heads * head_dim floats with a (cos, sin) table of
// [n_tokens][rope_pairs] from puna_vk_rope_table, over the first 2 * rope_pairs dims of each head:
// pairs (2i, 2i+1), or (i, i + rope_pairs) when neox (puna_rope_ex's two styles).
void puna_vk_rope(puna_vk *vk, puna_vk_buffer table, puna_vk_buffer vec, uint32_t n_tokens,
                  uint32_t n_heads, uint32_t head_dim, uint32_t rope_pairs, int neox);
// KV cache element formats: f32, f16 (packed halves), GGML q8_0 blocks (34 bytes per 32 values
// along a layer's rows, the CPU cache's bytes; kv_dim a multiple of 32).
enum puna_vk_kv_format { PUNA_VK_KV_F32 = 0, PUNA_VK_KV_F16 = 1, PUNA_VK_KV_Q8_0 = 2 };
// Bytes of one cache row of kv_dim values in `format` (0 for a bad format or width).
uint64_t puna_vk_kv_row_bytes(int format, uint32_t kv_dim);
// Stores n_tokens rows of keys and values (kv_dim floats each, from kv_offset floats into k and v)
// at positions pos0.. of a cache layer in `format` (enum puna_vk_kv_format); ring_rows > 0:
// position p goes to row p % ring_rows.
void puna_vk_kv_store(puna_vk *vk, puna_vk_buffer k, puna_vk_buffer v, uint32_t kv_offset, puna_vk_buffer k_cache,
                      puna_vk_buffer v_cache, uint32_t n_tokens, uint32_t kv_dim, uint32_t pos0, int format,
                      uint32_t ring_rows);
// Causal grouped-query attention of n_tokens queries at positions pos0.. (head_dim <= 256), as
// puna_attention_ex: window > 0 lets a token see only the last `window` positions (itself
// included); ring_rows > 0 reads position p from row p % ring_rows (needs window > 0 and
// ring_rows >= window + n_tokens - 1). The queries start q_offset floats into q, the output
// out_offset floats into out (rows of n_heads * head_dim floats): one sequence of a batched step.
void puna_vk_attention(puna_vk *vk, puna_vk_buffer q, uint32_t q_offset, puna_vk_buffer k_cache, puna_vk_buffer v_cache,
                       puna_vk_buffer out, uint32_t out_offset, uint32_t n_tokens, uint32_t pos0, uint32_t n_heads,
                       uint32_t n_kv_heads, uint32_t head_dim, int format, uint32_t window, uint32_t ring_rows);
// gate[i] = silu(gate[i]) * up[i] for i < n.
void puna_vk_swiglu(puna_vk *vk, puna_vk_buffer gate, puna_vk_buffer up, uint32_t n);
// y[t][i] += bias[i] for i < n, t < n_tokens.
void puna_vk_bias(puna_vk *vk, puna_vk_buffer bias, puna_vk_buffer y, uint32_t n, uint32_t n_tokens);

// The (cos, sin) pairs puna_rope_ex uses, computed the same way and scaled by attn_factor:
// out[t][i] for position pos0 + t and pair i < rope_dims / 2. factors may be NULL.
void puna_vk_rope_table(float *out, int n_tokens, int pos0, int rope_dims, float freq_base,
                        const float *factors, float attn_factor);

// ---- shaders (for tests and `puna devices`) ----------------------------------------------------
// The embedded SPIR-V modules: name, tier, words.
int puna_vk_shader_count(void);
const char *puna_vk_shader_name(int index);
int puna_vk_shader_tier(int index);
const uint32_t *puna_vk_shader_code(int index, uint32_t *word_count);

#ifdef __cplusplus
}
#endif
#endif
