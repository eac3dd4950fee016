// A timing prototype for issue 23's batch line, not part of Puna: Q4_0 weights times T tokens (16, or 8
// with -DT=8) with the tokens as the lanes of a 512-bit register (256-bit with T = 8) and one integer sum per (row, block of 32, token), the definition a
// next step would give the simple quants. For it:
//   p = sum_{i < 32} (q_i - 8) * X_i (exact), acc[b % 4] = fma(dw_b * dx_b, (float)p, acc[b % 4]) over the blocks b
//   in order, y = (acc[0] + acc[2]) + (acc[1] + acc[3]).
// Four rows at a time are unpacked into signed codes (with -128 times each block's code sum, since vpdpbusd needs the
// activations unsigned: X + 128), then each code dword is broadcast against T tokens' activation dwords. The result
// is checked against a scalar loop of the same definition. Single thread, AVX-512 VNNI only:
//   clang -O3 -march=native [-DT=8] scripts/experiments/tokens_as_lanes.c -o /tmp/tal && /tmp/tal ROWS COLS REPS
// Compare with `scripts/kernel-bench q4_0 ROWS COLS T 1 REPS 1` (today's definition, quantization included).
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifndef T
#define T 16  // or 8 (-DT=8)
#endif
#define R 4
typedef struct { uint16_t d; uint8_t qs[16]; } __attribute__((packed)) blk;
static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

// act: per block b: 8 x 64 bytes (dword k of 16 tokens, x + 128), dx[b][16]
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,f16c,avx2,fma")))
static void tile(const blk *w, int64_t nb, int64_t r0, const uint8_t *act, const float *dx, float *y, int64_t rows,
                 int8_t *scratch, int32_t *corr, float *dws) {
    // unpack R rows, 4 blocks at a time: scratch[i][b][32] signed codes in dword order, corr = -128 * sum, dw
    const __m512i m15 = _mm512_set1_epi8(15), e8 = _mm512_set1_epi8(8);
    const __m512i i01 = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), i23 = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    for (int i = 0; i < R; i++) {
        const blk *row = w + (r0 + i) * nb;
        for (int64_t b = 0; b < nb; b += 4) {
            __m512i q = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)row[b].qs));
            q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)row[b + 1].qs), 1);
            q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)row[b + 2].qs), 2);
            q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)row[b + 3].qs), 3);
            __m512i lo = _mm512_and_si512(q, m15), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m15);
            __m512i s = _mm512_add_epi64(_mm512_sad_epu8(lo, _mm512_setzero_si512()), _mm512_sad_epu8(hi, _mm512_setzero_si512()));
            s = _mm512_add_epi64(s, _mm512_shuffle_epi32(s, _MM_PERM_BADC));  // each lane's two qwords summed
            __m128i s4 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(_mm512_cvtepi64_epi32(s), _mm256_set_epi32(0, 0, 0, 0, 6, 4, 2, 0)));
            _mm_storeu_si128((__m128i *)(corr + i * nb + b), _mm_mullo_epi32(_mm_sub_epi32(s4, _mm_set1_epi32(256)), _mm_set1_epi32(-128)));
            lo = _mm512_sub_epi8(lo, e8); hi = _mm512_sub_epi8(hi, e8);
            _mm512_storeu_si512(scratch + (i * nb + b) * 32, _mm512_permutex2var_epi64(lo, i01, hi));
            _mm512_storeu_si512(scratch + (i * nb + b) * 32 + 64, _mm512_permutex2var_epi64(lo, i23, hi));
            for (int j = 0; j < 4; j++) dws[i * nb + b + j] = _cvtsh_ss(row[b + j].d);
        }
    }
#if T == 16
    __m512 acc[R][4];
    for (int i = 0; i < R; i++) for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *a = act + b * 512;
        __m512i x[8];
        for (int k = 0; k < 8; k++) x[k] = _mm512_load_si512(a + 64 * k);
        const __m512 d = _mm512_load_ps(dx + 16 * b);
        for (int i = 0; i < R; i++) {
            const int32_t *sw = (const int32_t *)(scratch + (i * nb + b) * 32);
            __m512i p = _mm512_set1_epi32(corr[i * nb + b]);
            for (int k = 0; k < 8; k++) p = _mm512_dpbusd_epi32(p, x[k], _mm512_set1_epi32(sw[k]));
            acc[i][b & 3] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(dws[i * nb + b])), _mm512_cvtepi32_ps(p), acc[i][b & 3]);
        }
    }
    for (int i = 0; i < R; i++) {
        float v[16];
        _mm512_storeu_ps(v, _mm512_add_ps(_mm512_add_ps(acc[i][0], acc[i][2]), _mm512_add_ps(acc[i][1], acc[i][3])));
        for (int t = 0; t < T; t++) y[t * rows + r0 + i] = v[t];
    }
#else  // T == 8: 256-bit registers
    __m256 acc[R][4];
    for (int i = 0; i < R; i++) for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *a = act + b * 256;
        __m256i x[8];
        for (int k = 0; k < 8; k++) x[k] = _mm256_load_si256((const __m256i *)(a + 32 * k));
        const __m256 d = _mm256_load_ps(dx + 8 * b);
        for (int i = 0; i < R; i++) {
            const int32_t *sw = (const int32_t *)(scratch + (i * nb + b) * 32);
            __m256i p = _mm256_set1_epi32(corr[i * nb + b]);
            for (int k = 0; k < 8; k++) p = _mm256_dpbusd_epi32(p, x[k], _mm256_set1_epi32(sw[k]));
            acc[i][b & 3] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(dws[i * nb + b])), _mm256_cvtepi32_ps(p), acc[i][b & 3]);
        }
    }
    for (int i = 0; i < R; i++) {
        float v[8];
        _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(acc[i][0], acc[i][2]), _mm256_add_ps(acc[i][1], acc[i][3])));
        for (int t = 0; t < T; t++) y[t * rows + r0 + i] = v[t];
    }
#endif
}

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 4096, cols = argc > 2 ? atoll(argv[2]) : 4096, reps = argc > 3 ? atoll(argv[3]) : 20;
    if (rows <= 0 || rows % R || cols <= 0 || cols % 128 || cols > 16384 || reps <= 0) {
        fprintf(stderr, "usage: tal ROWS COLS REPS (ROWS a multiple of %d, COLS a multiple of 128 up to 16384)\n", R);
        return 2;
    }
    int64_t nb = cols / 32;
    blk *w = aligned_alloc(64, sizeof(blk) * rows * nb + 64);
    for (int64_t i = 0; i < rows * nb; i++) {
        for (int j = 0; j < 16; j++) w[i].qs[j] = rand();
        float f = 0.001f + (rand() % 1000) * 1e-5f; w[i].d = _cvtss_sh(f, 0);
    }
    uint8_t *act = aligned_alloc(64, nb * 32 * T);
    float *dx = aligned_alloc(64, nb * 4 * T), *y = malloc(sizeof(float) * rows * T);
    int8_t X[T][4096 * 4];
    for (int t = 0; t < T; t++) for (int64_t c = 0; c < cols; c++) X[t][c] = (int8_t)(rand() % 255 - 127);
    for (int64_t b = 0; b < nb; b++) {
        for (int t = 0; t < T; t++) dx[T * b + t] = 0.01f + (rand() % 100) * 1e-4f;
        for (int k = 0; k < 8; k++) for (int t = 0; t < T; t++) for (int e = 0; e < 4; e++) {
            int wi = k < 4 ? 4 * k + e : 16 + 4 * (k - 4) + e;  // weight index within the block
            act[b * 32 * T + 4 * T * k + 4 * t + e] = (uint8_t)(X[t][32 * b + wi] + 128);
        }
    }
    int8_t *scratch = aligned_alloc(64, R * nb * 32); int32_t *corr = malloc(4 * R * nb); float *dws = malloc(4 * R * nb);
    double best = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now();
        for (int64_t r = 0; r < rows; r += R) tile(w, nb, r, act, dx, y, rows, scratch, corr, dws);
        double dt = now() - t0; if (dt < best) best = dt;
    }
    // check against the scalar definition
    int bad = 0;
    for (int64_t r = 0; r < rows && bad < 3; r += 97) for (int t = 0; t < T; t++) {
        float acc[4] = {0, 0, 0, 0};
        for (int64_t b = 0; b < nb; b++) {
            int32_t p = 0;
            for (int j = 0; j < 32; j++) { int q = j < 16 ? w[r * nb + b].qs[j] & 15 : w[r * nb + b].qs[j - 16] >> 4; p += (q - 8) * X[t][32 * b + j]; }
            acc[b & 3] = __builtin_fmaf(_cvtsh_ss(w[r * nb + b].d) * dx[T * b + t], (float)p, acc[b & 3]);
        }
        float want = (acc[0] + acc[2]) + (acc[1] + acc[3]);
        if (memcmp(&want, &y[t * rows + r], 4)) { if (bad++ < 3) printf("mismatch r %ld t %d: %.9g vs %.9g\n", (long)r, t, y[t * rows + r], want); }
    }
    printf("tokens-as-lanes q4_0 %ldx%ld T=%d R=%d: best %.3f ms = %.1f GMAC/s, %s\n", (long)rows, (long)cols, T, R, best * 1e3,
           rows * cols * T / best * 1e-9, bad ? "MISMATCH" : "matches its scalar definition");
    return 0;
}
