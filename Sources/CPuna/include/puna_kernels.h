// The compute kernels of the forward pass and the persistent thread pool that runs them.
//
// Every function has a portable reference with fixed accumulation orders, so results are
// reproducible and independent of the thread count. ISA-specific kernel families (AVX-512, AVX2,
// NEON with and without dotprod/i8mm) serve puna_matmul and puna_attention by default; see
// "dispatch" below for how they are chosen and pinned, and Sources/CPuna/kernels_internal.h for the
// integer arithmetic every family shares.
#ifndef PUNA_KERNELS_H
#define PUNA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- thread pool ---------------------------------------------------------------------------
// n_threads - 1 persistent worker threads plus the calling thread. Idle workers spin briefly and
// then sleep, so back-to-back runs cost microseconds and an idle pool costs no CPU.
typedef struct puna_pool puna_pool;

// n_threads < 1 means one per online CPU. Returns NULL when threads or memory cannot be had.
puna_pool *puna_pool_create(int n_threads);
// Stops and joins the workers. NULL is ignored. Must not overlap a puna_pool_run.
void puna_pool_destroy(puna_pool *pool);
int puna_pool_size(const puna_pool *pool);

// Runs task(ctx, i, n) on every thread i in [0, n) — i == 0 is the caller — and returns when all
// have finished. Only one thread at a time may call run (or any kernel taking this pool).
typedef void (*puna_task)(void *ctx, int thread_index, int n_threads);
void puna_pool_run(puna_pool *pool, puna_task task, void *ctx);

// Per-thread scratch owned by the pool, for kernels: returns a base pointer where thread i owns
// floats [i * stride, i * stride + floats_per_thread), stride >= floats_per_thread, 64-byte aligned,
// and writes stride to *stride_out. Grows on demand (call it before puna_pool_run, never from a
// task); stays valid until the next call or destroy. NULL when memory runs out.
float *puna_pool_scratch(puna_pool *pool, int64_t floats_per_thread, int64_t *stride_out);

// ---- matrix multiply -----------------------------------------------------------------------
// y[t][r] = sum_c W[r][c] * x[t][c] for t < n_tokens, r < rows.
// W: `rows` rows of `cols` weights of GGML type `type` (enum puna_type); each row is
//    cols / block_size * type_size bytes, rows packed back to back.
// x: f32 [n_tokens][cols]. y: f32 [n_tokens][rows]; must not overlap x or W.
// Rows are handed to the threads in chunks; each row is decoded once and dotted with every token,
// and a row's result does not depend on the thread count.
// Returns 0, or -1 when the type has no decoder or cols is not a whole number of blocks.
int puna_matmul(puna_pool *pool, int type, const void *weights, int64_t rows, int64_t cols,
                const float *x, int64_t n_tokens, float *y);

// ys[m] = W_m · x for up to 8 matrices of any types that share the input x ([n_tokens][cols]):
// the same results as one puna_matmul per matrix, in one pool run (Q/K/V, gate/up).
int puna_matmul_many(puna_pool *pool, int count, const int *types, const void *const *weights, const int64_t *rows,
                     int64_t cols, const float *x, int64_t n_tokens, float *const *ys);

// Whether puna_matmul can take this weight type.
int puna_matmul_supports(int type);

// ---- element-wise and per-vector ops (single-threaded: they are O(n) next to the matmuls) ------
// out[i] = x[i] / sqrt(mean(x^2) + eps) * weight[i]; weight NULL means all ones. out may alias x.
// The sum of squares is accumulated in double.
void puna_rmsnorm(float *out, const float *x, const float *weight, int64_t n, float eps);

// RoPE in GGML's "normal" mode over n_heads heads of head_dim floats, in place: each adjacent pair
// (x[2i], x[2i+1]) with 2i < rope_dims is rotated by pos * freq_base^(-2i / rope_dims); dims from
// rope_dims on are untouched. Angles are computed in f32 the way transformers does.
void puna_rope(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base);
// As puna_rope with the angle of pair i divided by freq_factors[i] (rope_dims / 2 entries, the
// "rope_freqs" tensor of LLaMA 3.1-style scaling); NULL means no factors.
void puna_rope_factors(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base,
                       const float *freq_factors);
// The general form: style PUNA_ROPE_NORMAL rotates adjacent pairs (2i, 2i+1), PUNA_ROPE_NEOX rotates
// (i, i + rope_dims/2) within the first rope_dims of each head; cos and sin are scaled by
// attn_factor (LongRoPE's magnitude correction; 1 otherwise).
enum { PUNA_ROPE_NORMAL = 0, PUNA_ROPE_NEOX = 2 };
void puna_rope_ex(float *vec, int n_heads, int head_dim, int rope_dims, int pos, float freq_base,
                  const float *freq_factors, int style, float attn_factor);
// Natural logarithm (Embedded Swift has no libm import of its own).
double puna_ln(double x);
double puna_pow(double x, double y);
// x[r][i] += bias[i] for n_rows rows of n floats.
void puna_add_bias(float *x, const float *bias, int64_t n_rows, int64_t n);

// LayerNorm: out[i] = (x[i] - mean) / sqrt(var + eps) * weight[i] + bias[i] (weight/bias NULL:
// 1/0); mean and variance accumulated in double. out may alias x.
void puna_layernorm(float *out, const float *x, const float *weight, const float *bias, int64_t n, float eps);
// The tanh approximation of GELU (Hugging Face's gelu_pytorch_tanh, BLOOM's gelu):
// out[i] = gelu(x[i]); puna_geglu: out[i] = gelu(gate[i]) * up[i]. out may alias the inputs.
void puna_gelu(float *out, const float *x, int64_t n);
void puna_geglu(float *out, const float *gate, const float *up, int64_t n);
// In place: x[i] = cap * tanh(x[i] / cap) (Gemma 2's soft-capping); x[i] *= factor.
void puna_softcap(float *x, int64_t n, float cap);
void puna_scale(float *x, int64_t n, float factor);
// out[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + exp(-g)). out may alias gate or up.
void puna_swiglu(float *out, const float *gate, const float *up, int64_t n);
// out[i] = a[i] + b[i]. out may alias a or b.
void puna_add(float *out, const float *a, const float *b, int64_t n);
// In place: x[i] = exp(x[i] - max) / sum. Sum accumulated in double.
void puna_softmax(float *x, int64_t n);

// ---- attention -----------------------------------------------------------------------------
// Causal multi-head attention with grouped-query heads for n_tokens new tokens at positions
// pos0 .. pos0 + n_tokens - 1.
// q:   f32 [n_tokens][n_heads * head_dim] (already roped).
// k_cache, v_cache: one row per position 0 .. pos0 + n_tokens - 1 (already filled), each row
//      n_kv_heads * head_dim values of kv_type (PUNA_TYPE_F32, PUNA_TYPE_F16, or PUNA_TYPE_Q8_0
//      with the row a whole number of blocks of 32, which may straddle heads), rows kv_row_bytes
//      apart (0 means packed: the row's size).
// out: f32 [n_tokens][n_heads * head_dim]; must not overlap q.
// Query head h reads kv head h / (n_heads / n_kv_heads); scores are scaled by 1/sqrt(head_dim).
// Work is split over (token, head) pairs. scratch: n_threads * n_ctx floats with
// n_ctx >= pos0 + n_tokens, or NULL to use the pool's scratch.
// Returns 0, or -1 for an unsupported kv_type or inconsistent sizes.
int puna_attention(puna_pool *pool, float *out, const float *q, int kv_type, const void *k_cache,
                   const void *v_cache, int64_t kv_row_bytes, int n_tokens, int pos0, int n_heads,
                   int n_kv_heads, int head_dim, float *scratch, int n_ctx);

// Options of puna_attention_ex: the score scale (puna_attention uses 1/sqrt(head_dim)), a sliding
// window (> 0: each token attends only to the last `window` positions, itself included; 0: all),
// soft-capping of the scaled scores (> 0: softcap * tanh(score / softcap); 0: none), a ring cache
// (> 0: position j lives in row j % ring_rows, which needs window > 0 and ring_rows >= window +
// n_tokens - 1; 0: row j), and ALiBi (n_heads slopes: score += slope * (key pos - query pos); NULL: none).
typedef struct {
    float scale;
    int window;
    float softcap;
    int ring_rows;
    const float *alibi_slopes;
} puna_attention_options;
int puna_attention_ex(puna_pool *pool, float *out, const float *q, int kv_type, const void *k_cache,
                      const void *v_cache, int64_t kv_row_bytes, int n_tokens, int pos0, int n_heads,
                      int n_kv_heads, int head_dim, float *scratch, int n_ctx, const puna_attention_options *options);

// ---- memory read probe -----------------------------------------------------------------------
// Reads `count` byte ranges once with every pool thread, each thread taking a contiguous share of
// every range as the matmuls split their rows, with no other work: the rate a decode step's weight
// stream could reach at best (`puna bench --bandwidth`). Returns a value folded from every 64-byte
// line read, so the loads cannot be optimised away. Ranges of 0 bytes are skipped.
uint64_t puna_read_ranges(puna_pool *pool, int count, const void *const *starts, const int64_t *bytes);

// ---- dispatch ------------------------------------------------------------------------------
// Quantized weights are multiplied by the fastest kernel family the CPU runs: the activations are
// quantized once per call to 8-bit blocks and every (row, token) dot is integer arithmetic plus a
// fixed sequence of f32 operations, so each family gives the same bits as the scalar int8
// family, and a row's result depends neither on the thread count nor on how many tokens share the
// call. Float weights (f32, f16, bf16) keep f32 activations. The reference family is the portable
// decode-to-f32 path above.
enum puna_kernel_family {
    PUNA_KERNELS_AUTO = 0,          // the best family available (the default)
    PUNA_KERNELS_REFERENCE = 1,     // decode rows to f32, f32 dot products
    PUNA_KERNELS_SCALAR = 2,        // scalar int8: the definition the SIMD families must match
    PUNA_KERNELS_AVX2 = 3,          // AVX2 + FMA + F16C
    PUNA_KERNELS_AVX2_VNNI = 4,     // AVX2 with AVX-VNNI dot products
    PUNA_KERNELS_AVX512 = 5,        // AVX-512 F/BW + VNNI
    PUNA_KERNELS_NEON = 6,          // AArch64 baseline (Cortex-A72: widening multiplies)
    PUNA_KERNELS_NEON_DOTPROD = 7,  // + sdot
    PUNA_KERNELS_NEON_I8MM = 8,     // + smmla for batches
    PUNA_KERNELS_AVX512_VBMI = 9,   // AVX-512 + VBMI byte permutes (Ice Lake, Zen 4 and later)
    PUNA_KERNELS_FAMILY_COUNT = 10
};
// Whether this build and CPU can run a family (AUTO, REFERENCE and SCALAR always can).
int puna_kernels_family_available(int family);
// Pins puna_matmul to a family (AUTO undoes it). Returns 0, or -1 when the family is unavailable.
// Global; change it only while no kernel runs.
int puna_kernels_set_family(int family);
// The family in force now (AUTO resolved to the detected one).
int puna_kernels_family(void);
// Short name, e.g. "avx512-vnni"; NULL for an unknown id.
const char *puna_kernels_family_name(int family);
// Non-zero: same as puna_kernels_set_family(PUNA_KERNELS_REFERENCE); zero: back to AUTO.
void puna_kernels_set_reference_only(int on);
// How the quantized-weight matmuls quantize activations: 1 = one 8-bit level per value (the
// default; what llama.cpp does, a few % of max|logit| on small models), 2 = two levels (~16-bit,
// ~1e-4 of max|logit|; slower on prompts). 0 restores the default. Returns 0, or -1 for another
// value. Global; change it only while no kernel runs. Results of every family agree bit for bit
// in either mode.
#define PUNA_DEFAULT_ACTIVATION_LEVELS 1
int puna_kernels_set_activation_levels(int levels);
int puna_kernels_activation_levels(void);
// Name of the family puna_matmul uses for a type now, e.g. "avx512-vnni" or "reference" (types a
// family lacks fall back to the reference); NULL for a type puna_matmul cannot take.
const char *puna_matmul_kernel_name(int type);
// Bytes one token's activations take once quantized for a matmul of `type` weights with `cols`
// columns under the kernel puna_matmul uses now; 0 when that kernel takes f32 activations.
int64_t puna_matmul_activation_bytes(int type, int64_t cols);

#ifdef __cplusplus
}
#endif
#endif
