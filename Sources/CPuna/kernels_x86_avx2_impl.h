// AVX2 kernels, included twice by kernels_x86_avx2.c: with AV_VNNI 0 (AVX2 + FMA + F16C: 4-byte
// sums from vpmaddubsw + vpmaddwd) and AV_VNNI 1 (AVX-VNNI's vpdpbusd / vpdpwssd). Each including
// pass defines AV_NAME(x) and AV_TARGET. Arithmetic as defined in kernels_internal.h, so results
// equal the scalar int8 family bit for bit.
//
// Layout of the work, as in the AVX-512 family but for 16 ymm registers: a tile is R weight rows x
// T tokens whose accumulators stay in registers over whole rows. Simple quants keep the 16 lane
// accumulators of a (row, token) pair in two ymm (blocks 0-1 and 2-3 of each 4-block group) and
// walk the row a group at a time, so every register index is a constant. Decoding streams DEC_R
// rows per tile and prefetches PF_TILES tiles ahead (it is bound by memory bandwidth); batches walk
// blocks of BLOCK_ROWS rows that stay in L2 while every token passes over them: first 4 tokens over
// whole rows (streaming the block in), then 8-token tiles over chunks of the rows (see
// simple_tile_chunk), which take each half of a group in its own pass so a pair has one accumulator.
//
// One activation level (the default) is the fast path: the quantizer stores 256 dx and the integer
// aux words divided by 256 (both exact), so the step is fma(dw * (256 dx), (float)(p / 256), acc)
// with no q2 products and no shift. K-quants then store bsums / 256 as int16, so the mins are one
// vpmaddwd; their (row, token) pairs are reduced four or eight at a time and the f32 steps of the
// definition run in vector lanes, one pair per lane.

#define AV_INL static inline __attribute__((always_inline)) AV_TARGET
// Tile loops have constant trip counts once inlined; they must unroll fully so tiles live in registers.
#if defined(__clang__)
#define AV_UNROLL _Pragma("clang loop unroll(full)")
#else
#define AV_UNROLL _Pragma("GCC unroll 16")
#endif

// Decode tuning (override with -D for experiments); measured on a 2-core Zen 3 (see BENCHMARKS.md).
#ifndef AV_DEC_R
#define AV_DEC_R 4
#endif
#ifndef AV_BNB_DEC_R   // rows per 4-bit bitsandbytes decode tile (blocksize 64), 1..4
#define AV_BNB_DEC_R 2
#endif
#ifndef AV_BNB_BT   // tokens per 4-bit bitsandbytes batch tile (blocksize 64), 1..4
#define AV_BNB_BT 4
#endif
_Static_assert(AV_BNB_BT >= 1 && AV_BNB_BT <= 4, "AV_BNB_BT: 1 to 4 tokens (the tile's accumulators)");
_Static_assert(AV_BNB_DEC_R >= 1 && AV_BNB_DEC_R <= 4, "AV_BNB_DEC_R: 1 to 4 rows (the tile's accumulators and scales)");
#ifndef AV_PF_TILES
#define AV_PF_TILES 2
#endif
#ifndef AV_PF_HINT
#define AV_PF_HINT _MM_HINT_T0
#endif
#ifndef AV_BLOCK_ROWS
#define AV_BLOCK_ROWS 64
#endif
// Batch register tiles: simple quants (rows x tokens), K-quants.
#ifndef AV_S_BR
#define AV_S_BR 1
#endif
#ifndef AV_S_BT
#define AV_S_BT 4
#endif
// Token tile of the chunked batch walk (one accumulator per pair there).
#ifndef AV_S_CT
#define AV_S_CT 8
#endif
// Q4_0/Q5_0 one-level step in inline asm (see step); 0 leaves it to the compiler.
#ifndef AV_ASM_STEP
#define AV_ASM_STEP 1
#endif
#ifndef AV_K_BR
#define AV_K_BR 1
#endif
#ifndef AV_K_BT
#define AV_K_BT 8
#endif

// ---- helpers ------------------------------------------------------------------------------------

// acc + int16 pairs p16 weighted by int16 scales sc (int32 lanes)
AV_INL __m256i AV_NAME(wsum)(__m256i acc, __m256i p16, __m256i sc) {
#if AV_VNNI
    return _mm256_dpwssd_avx_epi32(acc, p16, sc);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc));
#endif
}

// seed + the 4-byte lane sums of lo x xl plus hi x xh (u8 codes x s8 activations). Without VNNI
// the two int16 products are added before widening when they cannot overflow: 2 * 2 * 31 * 127
// for codes below 32, not for Q8_0's |codes| up to 128.
AV_INL __m256i AV_NAME(lane_sums)(__m256i seed, __m256i lo, __m256i xl, __m256i hi, __m256i xh, int wide) {
#if AV_VNNI
    (void)wide;
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(seed, lo, xl), hi, xh);
#else
    const __m256i ones = _mm256_set1_epi16(1);
    if (wide)
        return _mm256_add_epi32(seed, _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones),
                                                       _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones)));
    __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
    return _mm256_add_epi32(seed, _mm256_madd_epi16(p16, ones));
#endif
}

// Canonical reduce16 of acc01 (lanes 0-7) and acc23 (lanes 8-15).
AV_INL float AV_NAME(reduce16)(__m256 a01, __m256 a23) {
    __m256 h8 = _mm256_add_ps(a01, a23);
    __m128 h4 = _mm_add_ps(_mm256_castps256_ps128(h8), _mm256_extractf128_ps(h8, 1));
    __m128 h2 = _mm_add_ps(h4, _mm_movehl_ps(h4, h4));
    return _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
}

AV_INL float AV_NAME(hmax)(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

AV_INL __m256i AV_NAME(clamp)(__m256i v, int m) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(-m)), _mm256_set1_epi32(m));
}

AV_INL __m128i AV_NAME(pack16)(__m256i a, __m256i b) {
    __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xd8);  // 16 int16 in order
    return _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

AV_INL int32_t AV_NAME(hsum)(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    return _mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 1);
}

// Lane k of the result: the sum of the 8 lanes of v[k], for k < n (n <= 8; v[k] for k >= n unused).
AV_INL __m256i AV_NAME(sums8)(const __m256i *v, int n) {
    const __m256i z = _mm256_setzero_si256();
    __m256i h0 = _mm256_hadd_epi32(v[0], n > 1 ? v[1] : z), h1 = _mm256_hadd_epi32(n > 2 ? v[2] : z, n > 3 ? v[3] : z);
    __m256i g0 = _mm256_hadd_epi32(h0, h1);  // [v0..v3 low halves | v0..v3 high halves]
    if (n <= 4) return _mm256_castsi128_si256(_mm_add_epi32(_mm256_castsi256_si128(g0), _mm256_extracti128_si256(g0, 1)));
    __m256i h2 = _mm256_hadd_epi32(v[4], n > 5 ? v[5] : z), h3 = _mm256_hadd_epi32(n > 6 ? v[6] : z, n > 7 ? v[7] : z);
    __m256i g1 = _mm256_hadd_epi32(h2, h3);
    return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

// ---- activation quantization ------------------------------------------------------------------

// 16 floats -> the levels, as quantize_one in kernels_scalar.c; X = 256 q1 + q2 (two ymm).
AV_INL void AV_NAME(quantize16)(const float *x, __m256 id, __m256 id256, int levels, __m128i *q1, __m128i *q2, __m256i X[2]) {
    __m256i a[2], r[2];
    for (int h = 0; h < 2; h++) {
        __m256 v = _mm256_loadu_ps(x + 8 * h);
        a[h] = AV_NAME(clamp)(_mm256_cvtps_epi32(_mm256_mul_ps(v, id)), 127);
        __m256i w = AV_NAME(clamp)(_mm256_cvtps_epi32(_mm256_mul_ps(v, id256)), 65536);
        __m256i a256 = _mm256_slli_epi32(a[h], 8);
        r[h] = levels == 1 ? _mm256_setzero_si256() : AV_NAME(clamp)(_mm256_sub_epi32(w, a256), 127);
        X[h] = _mm256_add_epi32(a256, r[h]);
    }
    *q1 = AV_NAME(pack16)(a[0], a[1]);
    *q2 = AV_NAME(pack16)(r[0], r[1]);
}

AV_INL float AV_NAME(amax)(const float *x, int n, float m) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) v = _mm256_max_ps(v, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    float r = AV_NAME(hmax)(v);
    return r > m ? r : m;
}

// With one level the stored scales are 256 dx and the integer sums are divided by 256 (all
// exact, since X = 256 q1); the kernels below read them that way.
static AV_TARGET void AV_NAME(quantize)(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                                        int64_t t0, int64_t t1) {
    const int one = l->levels == 1;
    for (int64_t t = t0; t < t1; t++) {
        const float *xt = x + t * cols;
        uint8_t *base = act + t * l->token_bytes;
        uint8_t *qs = base + l->qs_off;
        float *d = (float *)(base + l->d_off);
        if (l->format == ACT_Q8_32) {
            for (int64_t b = 0; b < l->n_groups * 4; b++) {
                int64_t g = b / 4, k = b % 4;
                uint8_t *lo = qs + g * 256 + 16 * k;
                __m128i a0 = _mm_setzero_si128(), a1 = a0, r0 = a0, r1 = a0;
                __m256i X0[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() }, X1[2] = { X0[0], X0[0] };
                float db = 0;
                if (b < l->n_blocks) {
                    float amax = AV_NAME(amax)(xt + 32 * b, 32, 0);
                    float id = amax > 0 ? 127.0f / amax : 0.0f;
                    db = amax / 127.0f / 256.0f;
                    __m256 vid = _mm256_set1_ps(id), vid256 = _mm256_set1_ps(id * 256.0f);
                    AV_NAME(quantize16)(xt + 32 * b, vid, vid256, l->levels, &a0, &r0, X0);
                    AV_NAME(quantize16)(xt + 32 * b + 16, vid, vid256, l->levels, &a1, &r1, X1);
                }
                _mm_storeu_si128((__m128i *)lo, a0);
                _mm_storeu_si128((__m128i *)(lo + 64), a1);
                _mm_storeu_si128((__m128i *)(lo + 128), r0);
                _mm_storeu_si128((__m128i *)(lo + 192), r1);
                _mm_storeu_ps(d + 4 * b, _mm_set1_ps(one ? db * 256.0f : db));
                if (aux == AUX_NONE) continue;
                // lane j: X of weights 4j..4j+3 plus 16+4j..16+4j+3
                __m256i s01 = _mm256_add_epi32(X0[0], X1[0]), s23 = _mm256_add_epi32(X0[1], X1[1]);
                __m256i h = _mm256_hadd_epi32(s01, s23);
                h = _mm256_hadd_epi32(h, h);                     // [j0 j2 j0 j2 | j1 j3 j1 j3]
                __m128i v = _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                v = aux == AUX_NEG_SUM8     ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 3))
                    : aux == AUX_NEG_SUM16  ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 4))
                    : aux == AUX_NEG_SUM128 ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 7))
                                            : _mm_castps_si128(_mm_cvtepi32_ps(v));
                if (one && aux != AUX_SUM_F32) v = _mm_srai_epi32(v, 8);
                _mm_storeu_si128((__m128i *)(base + l->aux_off + g * 64 + 16 * k), v);
            }
        } else {
            int32_t *bsums = (int32_t *)(base + l->aux_off);
            for (int64_t b = 0; b < l->n_blocks; b++) {
                const float *xb = xt + 256 * b;
                float amax = AV_NAME(amax)(xb, 256, 0);
                float id = amax > 0 ? 127.0f / amax : 0.0f;
                d[b] = one ? amax / 127.0f / 256.0f * 256.0f : amax / 127.0f / 256.0f;
                __m256 vid = _mm256_set1_ps(id), vid256 = _mm256_set1_ps(id * 256.0f);
                for (int i = 0; i < 16; i++) {
                    __m128i q1, q2;
                    __m256i X[2];
                    AV_NAME(quantize16)(xb + 16 * i, vid, vid256, l->levels, &q1, &q2, X);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 16 * i), q1);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 256 + 16 * i), q2);
                    __m256i x16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(X[0], X[1]), 0xd8);
                    _mm256_storeu_si256((__m256i *)(qs + ACT256_STRIDE * b + ACT256_X16 + 32 * i), x16);
                    int32_t s = AV_NAME(hsum)(_mm256_add_epi32(X[0], X[1]));
                    // one level: the 16 sums of q1 (|s| <= 16 * 127) as int16 in the first 32 bytes
                    if (one) ((int16_t *)(bsums + 16 * b))[i] = (int16_t)(s / 256);
                    else bsums[16 * b + i] = s;
                }
            }
        }
    }
}

// ---- simple quants (blocks of 32) -----------------------------------------------------------
// A group is 4 blocks; half h of a group is blocks 2h and 2h + 1, one ymm per 16-weight half:
// lo holds weights 0..15 of both blocks (one per 128-bit lane), hi weights 16..31.

AV_INL int64_t AV_NAME(block_bytes)(int type) {
    return type == PUNA_TYPE_Q4_0 ? 18 : type == PUNA_TYPE_Q4_1 ? 20 : type == PUNA_TYPE_Q5_0 ? 22 : type == PUNA_TYPE_Q5_1 ? 24 : 34;
}

typedef struct { __m256i lo, hi, slo, shi; } AV_NAME(codes);

AV_INL __m256i AV_NAME(load2x16)(const uint8_t *p0, const uint8_t *p1) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p0)),
                                   _mm_loadu_si128((const __m128i *)p1), 1);
}

// bit i of each block's 16-bit qh half as 0x10 in byte i
AV_INL __m256i AV_NAME(bits)(uint32_t h0, uint32_t h1) {
    const __m256i shuf = _mm256_set_epi64x(0x0101010101010101LL, 0, 0x0101010101010101LL, 0);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_set_epi32(0, (int)h1, 0, (int)h1, 0, (int)h0, 0, (int)h0);
    v = _mm256_shuffle_epi8(v, shuf);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel), _mm256_set1_epi8(0x10));
}

// Codes of the block at p0 and the next one (both) or none (its lane zero; nothing read past p0's block).
AV_INL void AV_NAME(codes2)(int type, const uint8_t *p0, int both, AV_NAME(codes) *c) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int64_t bs = AV_NAME(block_bytes)(type);
    const uint8_t *p1 = both ? p0 + bs : p0;
    if (type == PUNA_TYPE_Q8_0) {
        __m256i a = AV_NAME(load2x16)(p0 + 2, p1 + 2), b = AV_NAME(load2x16)(p0 + 18, p1 + 18);
        if (!both) {
            a = _mm256_inserti128_si256(a, _mm_setzero_si128(), 1);
            b = _mm256_inserti128_si256(b, _mm_setzero_si128(), 1);
        }
        c->slo = a;
        c->shi = b;
        c->lo = _mm256_abs_epi8(a);
        c->hi = _mm256_abs_epi8(b);
        return;
    }
    const int off = type == PUNA_TYPE_Q4_0 ? 2 : type == PUNA_TYPE_Q4_1 ? 4 : type == PUNA_TYPE_Q5_0 ? 6 : 8;
    __m256i q = AV_NAME(load2x16)(p0 + off, p1 + off);
    if (!both) q = _mm256_inserti128_si256(q, _mm_setzero_si128(), 1);
    c->lo = _mm256_and_si256(q, m4);
    c->hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
    if (type == PUNA_TYPE_Q5_0 || type == PUNA_TYPE_Q5_1) {
        const int ho = type == PUNA_TYPE_Q5_0 ? 2 : 4;
        uint32_t h0 = kq_load32(p0 + ho), h1 = both ? kq_load32(p1 + ho) : 0;
        c->lo = _mm256_or_si256(c->lo, AV_NAME(bits)(h0 & 0xffff, h1 & 0xffff));
        c->hi = _mm256_or_si256(c->hi, AV_NAME(bits)(h0 >> 16, h1 >> 16));
    }
}

// The f16 at byte `at` of each of the n (1..4) blocks from p, bs bytes apart, as 4 floats (0 past n).
// A whole group's four are gathered in a general register (integer ops are idle here; vpinsrw
// would take four vector-port slots per scale), the others with vpinsrw.
AV_INL __m128 AV_NAME(scales4)(const uint8_t *p, int64_t bs, int at, int n) {
    if (n == 4) {
        uint64_t lo = (kq_load32(p + at) & 0xffffu) | (kq_load32(p + bs + at - 2) & 0xffff0000u);
        uint64_t hi = (kq_load32(p + 2 * bs + at) & 0xffffu) | (kq_load32(p + 3 * bs + at - 2) & 0xffff0000u);
        return _mm_cvtph_ps(_mm_cvtsi64_si128((long long)(lo | hi << 32)));
    }
    __m128i v = _mm_cvtsi32_si128(kq_load16(p + at));
    if (n > 1) v = _mm_insert_epi16(v, kq_load16(p + bs + at), 1);
    if (n > 2) v = _mm_insert_epi16(v, kq_load16(p + 2 * bs + at), 2);
    if (n > 3) v = _mm_insert_epi16(v, kq_load16(p + 3 * bs + at), 3);
    return _mm_cvtph_ps(v);
}

// [s0 s1 s2 s3 | s1 s2 s3 s3]: an in-lane permute by immediate then gives either half's lanes
// (lane-crossing permutes cost several cycles on Zen 3, and a constant index vector a register).
// The empty asm keeps clang from fusing this and the permutes back into vpermpd.
AV_INL __m256 AV_NAME(both_lanes)(__m128 s4) {
    __m256 s8 = _mm256_insertf128_ps(_mm256_castps128_ps256(s4), _mm_permute_ps(s4, 0xf9), 1);
    __asm__("" : "+x"(s8));
    return s8;
}

// Lanes of half h from both_lanes(s4): [s(2h) x 4, s(2h + 1) x 4].
AV_INL __m256 AV_NAME(half_lanes)(__m256 s8, int h) { return h ? _mm256_permute_ps(s8, 0xaa) : _mm256_permute_ps(s8, 0x00); }

// Where group g's activations lie from a token's start: its q bytes, aux words and scales.
// Computed per group behind an empty asm, so the compiler cannot hoist "token + offset" for every
// token and region out of the loop (3 T base registers: more than x86 has).
typedef struct { int64_t q, aux, d; } AV_NAME(goff);

AV_INL AV_NAME(goff) AV_NAME(group_offsets)(const act_layout *L, int64_t g) {
    AV_NAME(goff) o = { L->qs_off + 256 * g, L->aux_off + 64 * g, L->d_off + 64 * g };
    __asm__("" : "+r"(o.q), "+r"(o.aux), "+r"(o.d));
    return o;
}

// One (row, token) pair over half h of a group (x: the token's activations, o: the group's
// offsets): the canonical lane arithmetic. ONE: one level (dx is 256 dx, aux is divided by 256,
// mw was divided by 256 by the caller).
AV_INL __m256 AV_NAME(step)(__m256 acc, int type, const AV_NAME(codes) *c, __m256 dw, __m256 mw, const uint8_t *x,
                            AV_NAME(goff) o, int h, const int ONE) {
    const uint8_t *xq = x + o.q + 32 * h;
    const int q8 = type == PUNA_TYPE_Q8_0, has_min = type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1;
    const int aux_int = type == PUNA_TYPE_Q4_0 || type == PUNA_TYPE_Q5_0;
#if !AV_VNNI && AV_ASM_STEP
    if (ONE && aux_int) {
        // Q4_0/Q5_0, one level: the step as one unit. Left to itself clang hoists the products of
        // all 8 pairs of a chunk tile ahead of their float steps and spills the accumulators
        // (about -12% on a 4096 x 4096 x 128 Q4_0 matmul).
        __m256 t0, t1;
        const __m256i ones = _mm256_set1_epi16(1);
        __asm__ volatile("vpmaddubsw %[xl], %[lo], %[t0]\n\t"
                         "vpmaddubsw %[xh], %[hi], %[t1]\n\t"
                         "vpaddw %[t1], %[t0], %[t0]\n\t"
                         "vpmaddwd %[ones], %[t0], %[t0]\n\t"
                         "vpaddd %[aux], %[t0], %[t0]\n\t"
                         "vcvtdq2ps %[t0], %[t0]\n\t"
                         "vmulps %[dx], %[dw], %[t1]\n\t"
                         "vfmadd231ps %[t0], %[t1], %[acc]"
                         : [acc] "+x"(acc), [t0] "=&x"(t0), [t1] "=&x"(t1)
                         : [lo] "x"(c->lo), [hi] "x"(c->hi), [dw] "x"(dw), [ones] "x"(ones),
                           [xl] "m"(*(const __m256i *)xq), [xh] "m"(*(const __m256i *)(xq + 64)),
                           [aux] "m"(*(const __m256i *)(x + o.aux + 32 * h)), [dx] "m"(*(const __m256 *)(x + o.d + 32 * h)));
        (void)mw;
        return acc;
    }
#endif
    __m256i x1l = _mm256_load_si256((const __m256i *)xq), x1h = _mm256_load_si256((const __m256i *)(xq + 64));
    if (q8) {
        x1l = _mm256_sign_epi8(x1l, c->slo);
        x1h = _mm256_sign_epi8(x1h, c->shi);
    }
    __m256i aux = aux_int ? _mm256_load_si256((const __m256i *)(x + o.aux + 32 * h)) : _mm256_setzero_si256();
    const __m256 dx = _mm256_load_ps((const float *)(x + o.d + 32 * h));
    __m256i ia;
    if (ONE) {
        ia = AV_NAME(lane_sums)(aux, c->lo, x1l, c->hi, x1h, q8);
    } else {
        __m256i x2l = _mm256_load_si256((const __m256i *)(xq + 128)), x2h = _mm256_load_si256((const __m256i *)(xq + 192));
        if (q8) {
            x2l = _mm256_sign_epi8(x2l, c->slo);
            x2h = _mm256_sign_epi8(x2h, c->shi);
        }
        __m256i i1 = AV_NAME(lane_sums)(_mm256_setzero_si256(), c->lo, x1l, c->hi, x1h, q8);
        __m256i i2 = AV_NAME(lane_sums)(aux, c->lo, x2l, c->hi, x2h, q8);
        ia = _mm256_add_epi32(_mm256_slli_epi32(i1, 8), i2);
    }
    acc = _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(ia), acc);
    if (has_min)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(mw, dx), _mm256_load_ps((const float *)(x + o.aux + 32 * h)), acc);
    return acc;
}

// R rows x T tokens over the n (1..4) real blocks of group g. HS < 0: both halves,
// acc[(i * T + j) * 2 + h]; HS = 0 or 1: that half alone, acc[i * T + j].
AV_INL void AV_NAME(simple_group)(__m256 *acc, const qmm_args *a, int type, const uint8_t *w, const uint8_t *x0,
                                  int64_t g, const int R, const int T, const int n, const int ONE, const int HS) {
    const int64_t bs = AV_NAME(block_bytes)(type), rb = a->row_bytes, tb = a->layout.token_bytes;
    const int has_min = type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1;
    const AV_NAME(goff) o = AV_NAME(group_offsets)(&a->layout, g);
    AV_UNROLL for (int i = 0; i < R; i++) {
        const uint8_t *p = w + i * rb + 4 * bs * g;
        // Each row reads the activations from L1 again: kept in registers across rows they would
        // push the accumulators out to the stack.
        const uint8_t *xr = x0;
        if (R > 1) __asm__("" : "+r"(xr));
        const __m256 d4 = AV_NAME(both_lanes)(AV_NAME(scales4)(p, bs, 0, n));
        __m128 m4s = has_min ? AV_NAME(scales4)(p, bs, 2, n) : _mm_setzero_ps();
        if (ONE && has_min) m4s = _mm_mul_ps(m4s, _mm_set1_ps(1.0f / 256.0f));
        const __m256 m4 = AV_NAME(both_lanes)(m4s);
        AV_UNROLL for (int h = 0; h < 2; h++) {
            if (2 * h >= n) break;
            if (HS >= 0 && h != HS) continue;
            AV_NAME(codes) c;
            AV_NAME(codes2)(type, p + 2 * h * bs, 2 * h + 1 < n, &c);
            const __m256 dw = AV_NAME(half_lanes)(d4, h), mw = has_min ? AV_NAME(half_lanes)(m4, h) : _mm256_setzero_ps();
            AV_UNROLL for (int j = 0; j < T; j++) {
                const int k = HS >= 0 ? i * T + j : (i * T + j) * 2 + h;
                acc[k] = AV_NAME(step)(acc[k], type, &c, dw, mw, xr + j * tb, o, h, ONE);
            }
        }
    }
}

// Groups [g0, g1) of rows r..r+R-1 x tokens t..t+T-1 into acc, the row's last, partial group
// included when g1 reaches it. prefetch: pull in the rows PF_TILES tiles ahead meanwhile (the
// tile's R rows are contiguous, so a group's share of them is one linear range).
AV_INL void AV_NAME(simple_groups)(__m256 *acc, const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T,
                                   int64_t g0, int64_t g1, const int prefetch, const int ONE, const int HS) {
    const int64_t nb = a->cols / 32, nfull = nb / 4, rb = a->row_bytes;
    const int64_t gbytes = 4 * AV_NAME(block_bytes)(type);
    const int rem = (int)(nb % 4);
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * a->layout.token_bytes;
    const int64_t gend = g1 < nfull ? g1 : nfull;
    for (int64_t g = g0; g < gend; g++) {
        if (prefetch) {
            const uint8_t *pf = w + AV_PF_TILES * R * rb + g * gbytes * R;
            AV_UNROLL for (int i = 0; i < (int)((R * gbytes + 63) / 64) + 1; i++) _mm_prefetch((const char *)pf + 64 * i, AV_PF_HINT);
        }
        AV_NAME(simple_group)(acc, a, type, w, x0, g, R, T, 4, ONE, HS);
    }
    if (rem && g1 > nfull) AV_NAME(simple_group)(acc, a, type, w, x0, nfull, R, T, rem, ONE, HS);
}

// Whole rows r..r+R-1 x tokens t..t+T-1.
AV_INL void AV_NAME(simple_tile)(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T,
                                 const int prefetch, const int ONE) {
    __m256 acc[2 * 8];
    AV_UNROLL for (int k = 0; k < 2 * R * T; k++) acc[k] = _mm256_setzero_ps();
    AV_NAME(simple_groups)(acc, a, type, r, t, R, T, 0, a->layout.n_groups, prefetch, ONE, -1);
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++)
        a->y[(t + j) * a->rows + r + i] = AV_NAME(reduce16)(acc[(i * T + j) * 2], acc[(i * T + j) * 2 + 1]);
}

// Batches over long rows: a tile's T tokens of activations (256 bytes a group each) must stay in
// L1 while every row of a block passes over them, which whole rows of 4096+ columns do not allow.
// So after the first token tile (whole rows, streaming the block in from memory) the rows are
// walked in chunks of CHUNK_GROUPS groups, every row of the block per chunk, with the
// accumulators parked in `park` between chunks. Each lane still adds its blocks in order.
#ifndef AV_CHUNK_GROUPS
#define AV_CHUNK_GROUPS 8
#endif

// The two halves of a group go in separate passes (each lane's blocks are still added in order),
// so a tile holds one accumulator per pair and can take AV_S_CT tokens without spilling.
AV_INL void AV_NAME(simple_tile_chunk)(const qmm_args *a, int type, int64_t r, int64_t t, const int T, int64_t g0,
                                       int64_t g1, __m256 *park, const int ONE) {
    const int last = g1 >= a->layout.n_groups;
    AV_UNROLL for (int h = 0; h < 2; h++) {
        __m256 acc[8];
        AV_UNROLL for (int j = 0; j < T; j++) acc[j] = g0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps((const float *)&park[2 * j + h]);
        AV_NAME(simple_groups)(acc, a, type, r, t, 1, T, g0, g1, 0, ONE, h);
        if (last && h == 1) {
            AV_UNROLL for (int j = 0; j < T; j++)
                a->y[(t + j) * a->rows + r] = AV_NAME(reduce16)(_mm256_loadu_ps((const float *)&park[2 * j]), acc[j]);
        } else {
            AV_UNROLL for (int j = 0; j < T; j++) _mm256_storeu_ps((float *)&park[2 * j + h], acc[j]);
        }
    }
}

// ---- K-quants (super-blocks of 256) -------------------------------------------------------------
// One level: per (row, token) pair and super-block, S = sum_s sc_s * (codes . q1 of sub-block s)
// in 8 int32 lanes (vpmaddubsw, then vpmaddwd by the sub-block's scale) and the mins term
// B = sum_s m_s * bsum_s from the int16 bsums (one vpmaddwd); A = 256 S and B = 256 B1 exactly, so
// with the stored 256 dx the definition's steps are fma(d * (256 dx), (float)S, acc) and
// fma(-(dmin * (256 dx)), (float)B1, acc). Q6_K folds its -32 code offset into S as -32 * B1.
// Every product is bounded: |codes . q1| over a pair of bytes <= 2 * 63 * 127 in int16, lanes
// <= 8 * 2 * 16002 * 128 per super-block, well inside int32.
//
// Two levels keep the plain per-pair loop (int64 A from the int32 q1 and q2 parts).

// Per row and super-block: the scales as int16 for vpmaddwd (sc8: Q4_K/Q5_K [sc0..sc7 | m0..m7],
// Q6_K the 16 int8 scales widened), mins16 paired with the 16 bsums, and d, dmin.
typedef struct { __m256i sc, mins16; float d, dmin; } AV_NAME(kscales);

AV_INL void AV_NAME(kscales_load)(int type, const uint8_t *p, AV_NAME(kscales) *k) {
    if (type == PUNA_TYPE_Q6_K) {
        k->sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(p + 192)));
        k->mins16 = k->sc;
        k->d = _cvtsh_ss(kq_load16(p + 208));
        k->dmin = 0;
        return;
    }
    uint32_t u0 = kq_load32(p + 4), u1 = kq_load32(p + 8), u2 = kq_load32(p + 12);
    uint32_t sc03 = u0 & 0x3f3f3f3fu, m03 = u1 & 0x3f3f3f3fu;
    uint32_t sc47 = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    uint32_t m47 = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    k->sc = _mm256_cvtepu8_epi16(_mm_set_epi32((int)m47, (int)m03, (int)sc47, (int)sc03));
    __m128i m = _mm256_extracti128_si256(k->sc, 1);  // m0..m7 as int16
    k->mins16 = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
    k->d = _cvtsh_ss(kq_load16(p));
    k->dmin = _cvtsh_ss(kq_load16(p + 2));
}

// The int16 weight vector for code vector v (32 weights): Q4_K/Q5_K sub-block v's scale in all
// lanes; Q6_K [scale 2v x 8 | scale 2v + 1 x 8].
AV_INL __m256i AV_NAME(kscale_vec)(int type, const AV_NAME(kscales) *k, int v) {
    if (type == PUNA_TYPE_Q6_K) {
        __m256i half = v < 4 ? _mm256_permute2x128_si256(k->sc, k->sc, 0x00) : _mm256_permute2x128_si256(k->sc, k->sc, 0x11);  // scales 0-7 or 8-15, both lanes
        const int s = (v % 4) * 2;
        const __m256i idx = _mm256_setr_epi8(2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1,
                                             2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1, 2 * s, 2 * s + 1,
                                             2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3,
                                             2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3, 2 * s + 2, 2 * s + 3);
        return _mm256_shuffle_epi8(half, idx);
    }
    __m256i lo = _mm256_permute2x128_si256(k->sc, k->sc, 0x00);  // sc0..sc7 in both lanes
    const __m256i idx = _mm256_set1_epi16((short)((2 * v) | ((2 * v + 1) << 8)));
    return _mm256_shuffle_epi8(lo, idx);
}

// Unsigned codes of weights 32v .. 32v + 31 of the super-block at p (natural order).
AV_INL __m256i AV_NAME(kcodes)(int type, const uint8_t *p, int v) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    if (type == PUNA_TYPE_Q6_K) {
        // weights 128h + 32s + l: low nibble (s < 2) or high nibble of ql[64h + 32(s & 1) + l],
        // bits 2s, 2s + 1 of qh[32h + l]
        const int h = v / 4, s = v % 4;
        __m256i l = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * (s & 1)));
        __m256i hb = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
        if (s >= 2) l = _mm256_srli_epi16(l, 4);
        __m256i top = _mm256_and_si256(s ? _mm256_srli_epi16(hb, 2 * s) : hb, _mm256_set1_epi8(3));
        return _mm256_or_si256(_mm256_and_si256(l, m4), _mm256_slli_epi16(top, 4));
    }
    const int q5 = type == PUNA_TYPE_Q5_K;
    __m256i q = _mm256_loadu_si256((const __m256i *)(p + (q5 ? 48 : 16) + 32 * (v / 2)));
    __m256i c = (v & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
    if (q5) {
        __m256i hb = _mm256_loadu_si256((const __m256i *)(p + 16));
        __m256i bit = _mm256_and_si256(v ? _mm256_srli_epi16(hb, v) : hb, _mm256_set1_epi8(1));
        c = _mm256_or_si256(c, _mm256_slli_epi16(bit, 4));
    }
    return c;
}

AV_INL int64_t AV_NAME(kblock_bytes)(int type) { return type == PUNA_TYPE_Q4_K ? 144 : type == PUNA_TYPE_Q5_K ? 176 : 210; }

// One level, R rows x T tokens (R * T <= 8); pair p = i * T + j is lane p of the f32 accumulator.
AV_INL void AV_NAME(k_tile1)(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T, const int prefetch) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 256, rb = a->row_bytes, tb = L->token_bytes, bytes = AV_NAME(kblock_bytes)(type);
    const int P = R * T, q6 = type == PUNA_TYPE_Q6_K;
    __m256 acc = _mm256_setzero_ps();
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    for (int64_t b = 0; b < nb; b++) {
        if (prefetch) {
            const uint8_t *pf = w + AV_PF_TILES * R * rb + b * bytes * R;
            AV_UNROLL for (int i = 0; i < (int)((R * bytes + 63) / 64) + 1; i++) _mm_prefetch((const char *)pf + 64 * i, AV_PF_HINT);
        }
        AV_NAME(kscales) ks[8];
        AV_UNROLL for (int i = 0; i < R; i++) AV_NAME(kscales_load)(type, w + i * rb + bytes * b, &ks[i]);
        __m256i s[8];
        AV_UNROLL for (int p = 0; p < P; p++) s[p] = _mm256_setzero_si256();
        AV_UNROLL for (int v = 0; v < 8; v++) {
            AV_UNROLL for (int i = 0; i < R; i++) {
                const __m256i c = AV_NAME(kcodes)(type, w + i * rb + bytes * b, v), sc = AV_NAME(kscale_vec)(type, &ks[i], v);
                AV_UNROLL for (int j = 0; j < T; j++) {
                    const __m256i xv = _mm256_load_si256((const __m256i *)(x0 + j * tb + L->qs_off + ACT256_STRIDE * b + 32 * v));
                    s[i * T + j] = AV_NAME(wsum)(s[i * T + j], _mm256_maddubs_epi16(c, xv), sc);
                }
            }
        }
        // mins (Q4_K/Q5_K) or the code offset (Q6_K) from the int16 bsums
        __m256i m[8];
        AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) {
            const __m256i bs = _mm256_load_si256((const __m256i *)(x0 + j * tb + L->aux_off + 64 * b));
            __m256i mb = _mm256_madd_epi16(bs, ks[i].mins16);
            if (q6) s[i * T + j] = _mm256_sub_epi32(s[i * T + j], _mm256_slli_epi32(mb, 5));
            else m[i * T + j] = mb;
        }
        // per-pair scales, lane p = i * T + j: d (dmin) of row i, 256 dx of token j
#define AV_PAIR(p, e) ((p) < P ? (e) : 0.0f)
#define AV_DXOF(p) ((const float *)(x0 + ((p) % T) * tb + L->d_off))[b]
        const __m256 dxv = _mm256_setr_ps(AV_PAIR(0, AV_DXOF(0)), AV_PAIR(1, AV_DXOF(1)), AV_PAIR(2, AV_DXOF(2)), AV_PAIR(3, AV_DXOF(3)),
                                          AV_PAIR(4, AV_DXOF(4)), AV_PAIR(5, AV_DXOF(5)), AV_PAIR(6, AV_DXOF(6)), AV_PAIR(7, AV_DXOF(7)));
        const __m256 dv = _mm256_setr_ps(AV_PAIR(0, ks[0 / T].d), AV_PAIR(1, ks[1 / T].d), AV_PAIR(2, ks[2 / T].d), AV_PAIR(3, ks[3 / T].d),
                                         AV_PAIR(4, ks[4 / T].d), AV_PAIR(5, ks[5 / T].d), AV_PAIR(6, ks[6 / T].d), AV_PAIR(7, ks[7 / T].d));
        const __m256 S = _mm256_cvtepi32_ps(AV_NAME(sums8)(s, P));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(dv, dxv), S, acc);
        if (!q6) {
            const __m256 mv = _mm256_setr_ps(AV_PAIR(0, ks[0 / T].dmin), AV_PAIR(1, ks[1 / T].dmin), AV_PAIR(2, ks[2 / T].dmin),
                                             AV_PAIR(3, ks[3 / T].dmin), AV_PAIR(4, ks[4 / T].dmin), AV_PAIR(5, ks[5 / T].dmin),
                                             AV_PAIR(6, ks[6 / T].dmin), AV_PAIR(7, ks[7 / T].dmin));
            const __m256 B = _mm256_cvtepi32_ps(AV_NAME(sums8)(m, P));
            const __m256 neg = _mm256_xor_ps(_mm256_mul_ps(mv, dxv), _mm256_set1_ps(-0.0f));
            acc = _mm256_fmadd_ps(neg, B, acc);
        }
#undef AV_PAIR
#undef AV_DXOF
    }
    float out[8];
    _mm256_storeu_ps(out, acc);
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) a->y[(t + j) * a->rows + r + i] = out[i * T + j];
}

// Two levels: one pair at a time, A in int64 from the q1 and q2 parts.
AV_INL void AV_NAME(k_tile2)(const qmm_args *a, int type, int64_t r, int64_t t) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 256, bytes = AV_NAME(kblock_bytes)(type);
    const uint8_t *w = a->w + r * a->row_bytes, *x = a->act + t * L->token_bytes;
    float acc = 0;
    for (int64_t b = 0; b < nb; b++) {
        AV_NAME(kscales) ks;
        AV_NAME(kscales_load)(type, w + bytes * b, &ks);
        const uint8_t *xq = x + L->qs_off + ACT256_STRIDE * b;
        __m256i i1 = _mm256_setzero_si256(), i2 = i1;
        AV_UNROLL for (int v = 0; v < 8; v++) {
            const __m256i c = AV_NAME(kcodes)(type, w + bytes * b, v), sc = AV_NAME(kscale_vec)(type, &ks, v);
            i1 = AV_NAME(wsum)(i1, _mm256_maddubs_epi16(c, _mm256_load_si256((const __m256i *)(xq + 32 * v))), sc);
            i2 = AV_NAME(wsum)(i2, _mm256_maddubs_epi16(c, _mm256_load_si256((const __m256i *)(xq + 256 + 32 * v))), sc);
        }
        const int32_t *bs = (const int32_t *)(x + L->aux_off) + 16 * b;
        __m256i mlo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(ks.mins16));
        __m256i mhi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(ks.mins16, 1));
        __m256i mb = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_load_si256((const __m256i *)bs), mlo),
                                      _mm256_mullo_epi32(_mm256_load_si256((const __m256i *)(bs + 8)), mhi));
        const float dx = ((const float *)(x + L->d_off))[b];
        int64_t A = 256 * (int64_t)AV_NAME(hsum)(i1) + AV_NAME(hsum)(i2);
        if (type == PUNA_TYPE_Q6_K) {
            acc = fmaf(ks.d * dx, (float)(A - 32 * (int64_t)AV_NAME(hsum)(mb)), acc);
        } else {
            acc = fmaf(ks.d * dx, (float)A, acc);
            acc = fmaf(-(ks.dmin * dx), (float)AV_NAME(hsum)(mb), acc);
        }
    }
    a->y[t * a->rows + r] = acc;
}

// ---- float weights ------------------------------------------------------------------------------

AV_INL __m256 AV_NAME(load_w)(int type, const uint8_t *row, int64_t c) {
    if (type == PUNA_TYPE_F32) return _mm256_loadu_ps((const float *)row + c);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + c));
    if (type == PUNA_TYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AV_INL float AV_NAME(w_scalar)(int type, const uint8_t *row, int64_t c) {
    if (type == PUNA_TYPE_F32) return ((const float *)row)[c];
    uint16_t h = ((const uint16_t *)row)[c];
    if (type == PUNA_TYPE_F16) return kq_f16(h);
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// 2 accumulators of 8 lanes per pair, then the column tail one by one.
AV_INL void AV_NAME(float_tile)(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const int64_t cols = a->cols, rb = a->row_bytes;
    __m256 acc[2][2][2];
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
    const uint8_t *w = a->w + r * rb;
    const float *x0 = a->x + t * cols;
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) {
        AV_UNROLL for (int s = 0; s < 2; s++) AV_UNROLL for (int i = 0; i < R; i++) {
            __m256 wv = AV_NAME(load_w)(type, w + i * rb, c + 8 * s);
            AV_UNROLL for (int j = 0; j < T; j++)
                acc[i][j][s] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + j * cols + c + 8 * s), acc[i][j][s]);
        }
    }
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) {
        float sum = AV_NAME(reduce16)(acc[i][j][0], acc[i][j][1]);
        for (int64_t cc = c; cc < cols; cc++) sum = fmaf(AV_NAME(w_scalar)(type, w + i * rb, cc), x0[j * cols + cc], sum);
        a->y[(t + j) * a->rows + r + i] = sum;
    }
}

// ---- bitsandbytes (kernels_internal.h) -----------------------------------------------------------
// Half h of group g (activation blocks 2h, 2h + 1) at a time, as the simple quants. With AVX-VNNI
// the weights are unsigned (4-bit codes looked up as T + 128, int8 with the sign bit flipped) and
// the lanes start from the -128 * xs aux words; without it vpmaddubsw takes |w| against x carrying
// w's sign (2 * 128 * 127 fits int16, so each product pair is widened on its own).

// The weights of blocks 2h, 2h + 1 of a group (both, or only the first: its lane 1 is zero).
// lo: weights 0..15 of each block (one per 128-bit lane), hi: 16..31; slo / shi: signed copies.
AV_INL void AV_NAME(bnb_codes)(int bits, const uint8_t *p, int both, __m256i tab, AV_NAME(codes) *c) {
    __m256i lo, hi;
    if (bits == 4) {
        // 32 packed bytes = 64 elements: even ones in the high nibbles, odd ones in the low
        __m256i v = both ? _mm256_loadu_si256((const __m256i *)p) : _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p));
        if (!both) v = _mm256_inserti128_si256(v, _mm_setzero_si128(), 1);
        const __m256i m4 = _mm256_set1_epi8(0x0f);
        __m256i even = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        __m256i odd = _mm256_shuffle_epi8(tab, _mm256_and_si256(v, m4));
        lo = _mm256_unpacklo_epi8(even, odd);
        hi = _mm256_unpackhi_epi8(even, odd);
    } else {
        __m256i a = _mm256_loadu_si256((const __m256i *)p);
        __m256i b = both ? _mm256_loadu_si256((const __m256i *)(p + 32)) : _mm256_setzero_si256();
        lo = _mm256_permute2x128_si256(a, b, 0x20);
        hi = _mm256_permute2x128_si256(a, b, 0x31);
#if AV_VNNI
        const __m256i flip = _mm256_set1_epi8((char)0x80);
        lo = _mm256_xor_si256(lo, flip);
        hi = _mm256_xor_si256(hi, flip);
#endif
    }
#if AV_VNNI
    c->lo = lo;
    c->hi = hi;
#else
    c->slo = lo;
    c->shi = hi;
    c->lo = _mm256_abs_epi8(lo);
    c->hi = _mm256_abs_epi8(hi);
#endif
}

AV_INL __m256 AV_NAME(bnb_step)(__m256 acc, const AV_NAME(codes) *c, __m256 dw, const uint8_t *x, AV_NAME(goff) o, int h,
                                const int ONE) {
    const uint8_t *xq = x + o.q + 32 * h;
    __m256i x1l = _mm256_load_si256((const __m256i *)xq), x1h = _mm256_load_si256((const __m256i *)(xq + 64));
    const __m256 dx = _mm256_load_ps((const float *)(x + o.d + 32 * h));
#if AV_VNNI
    __m256i aux = _mm256_load_si256((const __m256i *)(x + o.aux + 32 * h));
    const int wide = 0;
#else
    __m256i aux = _mm256_setzero_si256();
    const int wide = 1;
    x1l = _mm256_sign_epi8(x1l, c->slo);
    x1h = _mm256_sign_epi8(x1h, c->shi);
#endif
    __m256i ia;
    if (ONE) {
        ia = AV_NAME(lane_sums)(aux, c->lo, x1l, c->hi, x1h, wide);
    } else {
        __m256i x2l = _mm256_load_si256((const __m256i *)(xq + 128)), x2h = _mm256_load_si256((const __m256i *)(xq + 192));
#if !AV_VNNI
        x2l = _mm256_sign_epi8(x2l, c->slo);
        x2h = _mm256_sign_epi8(x2h, c->shi);
#endif
        __m256i i1 = AV_NAME(lane_sums)(_mm256_setzero_si256(), c->lo, x1l, c->hi, x1h, wide);
        __m256i i2 = AV_NAME(lane_sums)(aux, c->lo, x2l, c->hi, x2h, wide);
        ia = _mm256_add_epi32(_mm256_slli_epi32(i1, 8), i2);
    }
    return _mm256_fmadd_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(ia), acc);
}

// Lanes of half h from element e0 (the half's first): the absmax of its one or two blocks.
AV_INL __m256 AV_NAME(bnb4_dw)(const bnb4_ctx *c, int64_t e0, int both) {
    int64_t b0 = bnb4_block_of(c, e0), b1 = both ? bnb4_block_of(c, e0 + 32) : b0;
    float a0 = bnb4_absmax(c, b0), a1 = !both ? 0.0f : b1 == b0 ? a0 : bnb4_absmax(c, b1);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(a0)), _mm_set1_ps(a1), 1);
}

// R rows x T tokens over whole rows (bits 4 or 8), two accumulators (halves) per pair.
AV_INL void AV_NAME(bnb_tile)(const qmm_args *a, int bits, int64_t r, int64_t t, const int R, const int T, const int prefetch,
                              const int ONE) {
    const act_layout *L = &a->layout;
    const int64_t cols = a->cols, nb = cols / 32, tb = L->token_bytes;
    const int64_t rb = bits == 4 ? cols / 2 : cols, gbytes = bits == 4 ? 64 : 128;
    bnb4_ctx c;
    const uint8_t *w;
    __m256i tab = _mm256_setzero_si256();
    if (bits == 4) {
        bnb4_ctx_init(&c, (const puna_bnb4_weight *)(const void *)a->w);
#if AV_VNNI
        tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c.U));
#else
        tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c.T));
#endif
        w = c.w->packed + r * rb;
    } else {
        w = (const uint8_t *)((const puna_bnb_int8_weight *)(const void *)a->w)->weight + r * rb;
    }
    __m256 acc[2 * 8];
    AV_UNROLL for (int k = 0; k < 2 * R * T; k++) acc[k] = _mm256_setzero_ps();
    const uint8_t *x0 = a->act + t * tb;
    const __m256 ones = _mm256_set1_ps(1.0f);
    for (int64_t g = 0; g < L->n_groups; g++) {
        const int64_t n = nb - 4 * g < 4 ? nb - 4 * g : 4;
        if (prefetch && n == 4) {
            const uint8_t *pf = w + AV_PF_TILES * R * rb + g * gbytes * R;
            AV_UNROLL for (int i = 0; i < (int)((R * gbytes + 63) / 64) + 1; i++) _mm_prefetch((const char *)pf + 64 * i, AV_PF_HINT);
        }
        const AV_NAME(goff) o = AV_NAME(group_offsets)(L, g);
        AV_UNROLL for (int i = 0; i < R; i++) {
            AV_UNROLL for (int h = 0; h < 2; h++) {
                if (2 * h >= n) break;
                const int both = 2 * h + 1 < n;
                AV_NAME(codes) cd;
                AV_NAME(bnb_codes)(bits, w + i * rb + g * gbytes + h * gbytes / 2, both, tab, &cd);
                const __m256 dw = bits == 4 ? AV_NAME(bnb4_dw)(&c, (r + i) * cols + 128 * g + 64 * h, both) : ones;
                AV_UNROLL for (int j = 0; j < T; j++) {
                    const int k = (i * T + j) * 2 + h;
                    acc[k] = AV_NAME(bnb_step)(acc[k], &cd, dw, x0 + j * tb, o, h, ONE);
                }
            }
        }
    }
    AV_UNROLL for (int i = 0; i < R; i++) {
        const float scale = bits == 4 ? c.mscale
                                      : ((const puna_bnb_int8_weight *)(const void *)a->w)->row_scale[r + i] * (1.0f / 127.0f);
        AV_UNROLL for (int j = 0; j < T; j++)
            a->y[(t + j) * a->rows + r + i] = AV_NAME(reduce16)(acc[(i * T + j) * 2], acc[(i * T + j) * 2 + 1]) * scale;
    }
}

// Requests `bytes` from p on, a cache line at a time: the first tiles of a decoding chunk.
AV_INL void AV_NAME(prefetch_bytes)(const uint8_t *p, int64_t bytes) {
    for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch((const char *)p + off, AV_PF_HINT);
}

// Decoding 4-bit weights of blocksize 64 (QLoRA's): half h of group g is exactly bnb block
// 2g + h of its row, so a half's scale is one broadcast from am[]. The absmax of 8 blocks at a time
// are decoded as one vector from scalar table lookups (on Zen 3 faster than a gather of the
// 256-entry table, and than scalar arithmetic into am[]).
AV_INL void AV_NAME(bnb4_absmax8)(const bnb4_ctx *c, int64_t b, float *am) {
    const puna_bnb4_weight *w = c->w;
    if (!w->absmax_codes) {
        _mm256_store_ps(am, _mm256_loadu_ps(w->absmax + b));
        return;
    }
    const int64_t n0 = b >> c->nest_shift;
    if (n0 != (b + 7) >> c->nest_shift) {   // across a nested block: one by one
        for (int k = 0; k < 8; k++) am[k] = bnb4_absmax(c, b + k);
        return;
    }
    const uint8_t *code = w->absmax_codes + b;
    const float *t = w->nested_quant_map;
    __m256 v = _mm256_mul_ps(_mm256_setr_ps(t[code[0]], t[code[1]], t[code[2]], t[code[3]], t[code[4]], t[code[5]], t[code[6]], t[code[7]]),
                             _mm256_broadcast_ss(w->nested_absmax + n0));
    __asm__("" : "+x"(v));  // the product is rounded to f32 before the offset is added (bnb4_absmax)
    _mm256_store_ps(am, _mm256_add_ps(v, _mm256_set1_ps(w->nested_offset)));
}

// One half (half h of group g) of rows r..r+R-1 into acc[2i + h]; am[8i] is row i's scale.
// Without VNNI the sign goes onto the weights, so |x| is taken once for all R rows:
// |x| * sign(w, x) is the same product as the other families' |w| * sign(x, w).
AV_INL void AV_NAME(bnb4_dec64_half)(__m256 *acc, const uint8_t *w, int64_t rb, __m256i tab, const float *am,
                                     const uint8_t *x, AV_NAME(goff) o, int64_t g, int h, const int R) {
#if AV_VNNI
    AV_UNROLL for (int i = 0; i < R; i++) {
        AV_NAME(codes) cd;
        AV_NAME(bnb_codes)(4, w + i * rb + g * 64 + h * 32, 1, tab, &cd);
        acc[2 * i + h] = AV_NAME(bnb_step)(acc[2 * i + h], &cd, _mm256_broadcast_ss(am + 8 * i), x, o, h, 1);
    }
#else
    const uint8_t *xq = x + o.q + 32 * h;
    const __m256i xl = _mm256_load_si256((const __m256i *)xq), xh = _mm256_load_si256((const __m256i *)(xq + 64));
    const __m256i axl = _mm256_abs_epi8(xl), axh = _mm256_abs_epi8(xh);
    const __m256 dx = _mm256_load_ps((const float *)(x + o.d + 32 * h));
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
#if AV_ASM_STEP
    // As one unit, for the same reason as the Q4_0 step: left to itself clang keeps fewer of the
    // accumulators in registers and turns the scale broadcasts into shuffles.
    (void)xl; (void)xh;
    AV_UNROLL for (int i = 0; i < R; i++) {
        __m256i t0, t1, t2;
        __asm__("vmovdqu %[w], %[t0]\n\t"
                "vpsrlw $4, %[t0], %[t1]\n\t"
                "vpand %[m4], %[t1], %[t1]\n\t"
                "vpand %[m4], %[t0], %[t0]\n\t"
                "vpshufb %[t1], %[tab], %[t1]\n\t"      // even elements (high nibbles)
                "vpshufb %[t0], %[tab], %[t0]\n\t"      // odd elements
                "vpunpcklbw %[t0], %[t1], %[t2]\n\t"    // lo: 0..15 of each block
                "vpunpckhbw %[t0], %[t1], %[t1]\n\t"    // hi: 16..31
                "vpsignb %[xl], %[t2], %[t2]\n\t"
                "vpsignb %[xh], %[t1], %[t1]\n\t"
                "vpmaddubsw %[t2], %[axl], %[t2]\n\t"
                "vpmaddubsw %[t1], %[axh], %[t1]\n\t"
                "vpmaddwd %[ones], %[t2], %[t2]\n\t"
                "vpmaddwd %[ones], %[t1], %[t1]\n\t"
                "vpaddd %[t1], %[t2], %[t2]\n\t"
                "vcvtdq2ps %[t2], %[t2]\n\t"
                "vbroadcastss %[am], %[t1]\n\t"
                "vmulps %[dx], %[t1], %[t1]\n\t"
                "vfmadd231ps %[t2], %[t1], %[acc]"
                : [acc] "+x"(acc[2 * i + h]), [t0] "=&x"(t0), [t1] "=&x"(t1), [t2] "=&x"(t2)
                : [w] "m"(*(const __m256i_u *)(w + i * rb + g * 64 + h * 32)), [tab] "x"(tab), [m4] "x"(m4), [ones] "x"(ones),
                  [axl] "x"(axl), [axh] "x"(axh), [xl] "m"(*(const __m256i *)xq), [xh] "m"(*(const __m256i *)(xq + 64)),
                  [am] "m"(am[8 * i]), [dx] "m"(*(const __m256 *)(x + o.d + 32 * h)));
    }
    (void)dx;
#else
    AV_UNROLL for (int i = 0; i < R; i++) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(w + i * rb + g * 64 + h * 32));
        const __m256i even = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
        const __m256i odd = _mm256_shuffle_epi8(tab, _mm256_and_si256(v, m4));
        const __m256i lo = _mm256_sign_epi8(_mm256_unpacklo_epi8(even, odd), xl);
        const __m256i hi = _mm256_sign_epi8(_mm256_unpackhi_epi8(even, odd), xh);
        const __m256i ia = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(axl, lo), ones),
                                            _mm256_madd_epi16(_mm256_maddubs_epi16(axh, hi), ones));
        acc[2 * i + h] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_broadcast_ss(am + 8 * i), dx), _mm256_cvtepi32_ps(ia), acc[2 * i + h]);
    }
#endif
#endif
}

AV_INL void AV_NAME(bnb4_dec64_tile)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r, const int R,
                                     const int prefetch) {
    const int64_t cols = a->cols, rb = cols / 2, nh = cols / 64;   // halves = bnb blocks per row
    const uint8_t *w = c->w->packed + r * rb, *x = a->act;
    __m256 acc[2 * 4];
    AV_UNROLL for (int k = 0; k < 2 * R; k++) acc[k] = _mm256_setzero_ps();
    _Alignas(32) float am[4 * 8];   // [row][half of the 4-group chunk]
    int64_t q = 0;
    for (; q + 8 <= nh; q += 8) {
        AV_UNROLL for (int i = 0; i < R; i++) AV_NAME(bnb4_absmax8)(c, (r + i) * nh + q, am + 8 * i);
        AV_UNROLL for (int k = 0; k < 4; k++) {
            const int64_t g = q / 2 + k;
            if (prefetch) {
                const uint8_t *pf = w + AV_PF_TILES * R * rb + g * 64 * R;
                AV_UNROLL for (int i = 0; i < (R * 64 + 63) / 64 + 1; i++) _mm_prefetch((const char *)pf + 64 * i, AV_PF_HINT);
            }
            const AV_NAME(goff) o = AV_NAME(group_offsets)(&a->layout, g);
            AV_NAME(bnb4_dec64_half)(acc, w, rb, tab, am + 2 * k, x, o, g, 0, R);
            AV_NAME(bnb4_dec64_half)(acc, w, rb, tab, am + 2 * k + 1, x, o, g, 1, R);
        }
    }
    for (; q < nh; q++) {   // the last < 8 halves, scale by scale
        AV_UNROLL for (int i = 0; i < R; i++) am[8 * i] = bnb4_absmax(c, (r + i) * nh + q);
        const AV_NAME(goff) o = AV_NAME(group_offsets)(&a->layout, q / 2);
        AV_NAME(bnb4_dec64_half)(acc, w, rb, tab, am, x, o, q / 2, (int)(q % 2), R);
    }
    AV_UNROLL for (int i = 0; i < R; i++) a->y[r + i] = AV_NAME(reduce16)(acc[2 * i], acc[2 * i + 1]) * c->mscale;
}

static AV_TARGET void AV_NAME(bnb4_dec64_pf)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r) {
    AV_NAME(bnb4_dec64_tile)(a, c, tab, r, AV_BNB_DEC_R, 1);
}
static AV_TARGET void AV_NAME(bnb4_dec64_last)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r) {
    AV_NAME(bnb4_dec64_tile)(a, c, tab, r, AV_BNB_DEC_R, 0);
}
static AV_TARGET void AV_NAME(bnb4_dec64_one)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r) {
    AV_NAME(bnb4_dec64_tile)(a, c, tab, r, 1, 0);
}

// Whether decode can take the blocksize-64 path: one activation level and a power-of-two nested
// blocksize when double-quantized (256 as transformers writes it).
static int AV_NAME(bnb4_dec64_fits)(const qmm_args *a) {
    const puna_bnb4_weight *w = (const puna_bnb4_weight *)(const void *)a->w;
    if (a->n_tokens != 1 || a->layout.levels != 1 || w->blocksize != 64 || a->cols % 64 != 0) return 0;
    return !w->absmax_codes || bnb_log2(w->nested_blocksize) >= 0;
}

// Batches: the same with more than one token (the batch tile has no unsigned-table variant).
static int AV_NAME(bnb4_b64_fits)(const qmm_args *a) {
    const puna_bnb4_weight *w = (const puna_bnb4_weight *)(const void *)a->w;
    if (a->n_tokens < 2 || a->layout.levels != 1 || w->blocksize != 64 || a->cols % 64 != 0) return 0;
    return !w->absmax_codes || bnb_log2(w->nested_blocksize) >= 0;
}

static AV_TARGET void AV_NAME(rows_bnb4_dec64)(const qmm_args *a, int64_t r0, int64_t r1) {
    bnb4_ctx c;
    bnb4_ctx_init(&c, (const puna_bnb4_weight *)(const void *)a->w);
#if AV_VNNI
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c.U));
#else
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c.T));
#endif
    const int64_t ahead = AV_PF_TILES * AV_BNB_DEC_R < r1 - r0 ? AV_PF_TILES * AV_BNB_DEC_R : r1 - r0;
    AV_NAME(prefetch_bytes)(c.w->packed + r0 * (a->cols / 2), ahead * (a->cols / 2));   // as prefetch_rows
    int64_t r = r0;
    for (; r + (AV_PF_TILES + 1) * AV_BNB_DEC_R <= r1; r += AV_BNB_DEC_R) AV_NAME(bnb4_dec64_pf)(a, &c, tab, r);
    for (; r + AV_BNB_DEC_R <= r1; r += AV_BNB_DEC_R) AV_NAME(bnb4_dec64_last)(a, &c, tab, r);
    for (; r < r1; r++) AV_NAME(bnb4_dec64_one)(a, &c, tab, r);
}

// Batches of 4-bit weights with blocksize 64 on one activation level: each half of a row is looked
// up once (w and |w|) for T tokens, which take w's sign onto x (the generic tile's products); the
// scales come 8 blocks at a time as in decoding.
AV_INL void AV_NAME(bnb4_b64_half)(__m256 *acc, __m256i v, __m256i tab, const float *am, const uint8_t *x0, int64_t tb,
                                   AV_NAME(goff) o, int h, const int T) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i even = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    const __m256i odd = _mm256_shuffle_epi8(tab, _mm256_and_si256(v, m4));
    const __m256i lo = _mm256_unpacklo_epi8(even, odd), hi = _mm256_unpackhi_epi8(even, odd);
    const __m256i alo = _mm256_abs_epi8(lo), ahi = _mm256_abs_epi8(hi);
    const __m256 s = _mm256_broadcast_ss(am);
    AV_UNROLL for (int j = 0; j < T; j++) {
        const uint8_t *x = x0 + j * tb;
        const __m256i xl = _mm256_sign_epi8(_mm256_load_si256((const __m256i *)(x + o.q + 32 * h)), lo);
        const __m256i xh = _mm256_sign_epi8(_mm256_load_si256((const __m256i *)(x + o.q + 32 * h + 64)), hi);
        const __m256i ia = AV_NAME(lane_sums)(_mm256_setzero_si256(), alo, xl, ahi, xh, 1);
        const __m256 dx = _mm256_load_ps((const float *)(x + o.d + 32 * h));
        acc[2 * j + h] = _mm256_fmadd_ps(_mm256_mul_ps(s, dx), _mm256_cvtepi32_ps(ia), acc[2 * j + h]);
    }
}

AV_INL void AV_NAME(bnb4_b64_tile)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r, int64_t t, const int T) {
    const int64_t cols = a->cols, nh = cols / 64, tb = a->layout.token_bytes;
    const uint8_t *w = c->w->packed + r * (cols / 2), *x0 = a->act + t * tb;
    __m256 acc[2 * 4];
    AV_UNROLL for (int k = 0; k < 2 * T; k++) acc[k] = _mm256_setzero_ps();
    _Alignas(32) float am[8];
    for (int64_t g = 0; 2 * g + 1 < nh; g++) {
        const int64_t q = 2 * g;
        if ((g & 3) == 0) {
            if (q + 8 <= nh) AV_NAME(bnb4_absmax8)(c, r * nh + q, am);
            else for (int64_t k = 0; q + k < nh; k++) am[k] = bnb4_absmax(c, r * nh + q + k);
        }
        const AV_NAME(goff) o = AV_NAME(group_offsets)(&a->layout, g);
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + 32 * q)), v1 = _mm256_loadu_si256((const __m256i *)(w + 32 * q + 32));
        AV_NAME(bnb4_b64_half)(acc, v0, tab, am + (q & 7), x0, tb, o, 0, T);
        AV_NAME(bnb4_b64_half)(acc, v1, tab, am + (q & 7) + 1, x0, tb, o, 1, T);
    }
    if (nh & 1) {   // a last group with one half
        am[0] = bnb4_absmax(c, r * nh + nh - 1);
        const AV_NAME(goff) o = AV_NAME(group_offsets)(&a->layout, nh / 2);
        AV_NAME(bnb4_b64_half)(acc, _mm256_loadu_si256((const __m256i *)(w + 32 * (nh - 1))), tab, am, x0, tb, o, 0, T);
    }
    AV_UNROLL for (int j = 0; j < T; j++) a->y[(t + j) * a->rows + r] = AV_NAME(reduce16)(acc[2 * j], acc[2 * j + 1]) * c->mscale;
}

static AV_TARGET void AV_NAME(bnb4_b64_full)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r, int64_t t) {
    AV_NAME(bnb4_b64_tile)(a, c, tab, r, t, AV_BNB_BT);
}
static AV_TARGET void AV_NAME(bnb4_b64_one)(const qmm_args *a, const bnb4_ctx *c, __m256i tab, int64_t r, int64_t t) {
    AV_NAME(bnb4_b64_tile)(a, c, tab, r, t, 1);
}

static AV_TARGET void AV_NAME(rows_bnb4_b64)(const qmm_args *a, int64_t r0, int64_t r1) {
    bnb4_ctx c;
    bnb4_ctx_init(&c, (const puna_bnb4_weight *)(const void *)a->w);
    const __m256i tab = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)c.T));
    for (int64_t rb = r0; rb < r1; rb += AV_BLOCK_ROWS) {
        const int64_t re = rb + AV_BLOCK_ROWS < r1 ? rb + AV_BLOCK_ROWS : r1;
        int64_t t = 0;
        for (; t + AV_BNB_BT <= a->n_tokens; t += AV_BNB_BT)
            for (int64_t r = rb; r < re; r++) AV_NAME(bnb4_b64_full)(a, &c, tab, r, t);
        for (; t < a->n_tokens; t++)
            for (int64_t r = rb; r < re; r++) AV_NAME(bnb4_b64_one)(a, &c, tab, r, t);
    }
}

// ---- row drivers --------------------------------------------------------------------------------

// A decoding chunk starts cold: its first PF_TILES tiles are requested up front, the tiles' own
// prefetching covers the rest, and the last tiles prefetch nothing past the chunk.
static AV_TARGET void AV_NAME(prefetch_rows)(const qmm_args *a, int64_t r0, int64_t r1) {
    int64_t end = r0 + AV_PF_TILES * AV_DEC_R < r1 ? r0 + AV_PF_TILES * AV_DEC_R : r1;
    AV_NAME(prefetch_bytes)(a->w + r0 * a->row_bytes, (end - r0) * a->row_bytes);
}

// No chunked walk (K-quants): a null chunk function.
#define AV_NAME_no_chunk_fn ((void (*)(const qmm_args *, int64_t, int64_t, int64_t, int64_t, __m256 *))0)

// TILE(a, r, t, R, T, prefetch) for one type and mode; decode in DEC_R-row tiles with prefetch,
// batches in row blocks x BR x BT register tiles.
#define AV_ROWS(fname, TILE, BR, BT, CHUNK, CT)                                                                  \
    static AV_TARGET void AV_NAME(fname##_dec)(const qmm_args *a, int64_t r) { TILE(a, r, 0, AV_DEC_R, 1, 1); }   \
    static AV_TARGET void AV_NAME(fname##_declast)(const qmm_args *a, int64_t r) { TILE(a, r, 0, AV_DEC_R, 1, 0); } \
    static AV_TARGET void AV_NAME(fname##_11)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, r, t, 1, 1, 0); } \
    static AV_TARGET void AV_NAME(fname##_full)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, r, t, BR, BT, 0); } \
    static AV_TARGET void AV_NAME(fname##_fullpf)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, r, t, BR, BT, 1); } \
    static AV_TARGET void AV_NAME(fname##_rowtail)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, r, t, 1, BT, 0); } \
    static AV_TARGET void AV_NAME(fname##_tok1)(const qmm_args *a, int64_t r, int64_t t) { TILE(a, r, t, BR, 1, 0); } \
    static void AV_NAME(fname)(const qmm_args *a, int64_t r0, int64_t r1) {                                   \
        if (a->n_tokens == 1) {                                                                                \
            int64_t r = r0;                                                                                    \
            AV_NAME(prefetch_rows)(a, r0, r1);                                                                 \
            for (; r + (AV_PF_TILES + 1) * AV_DEC_R <= r1; r += AV_DEC_R) AV_NAME(fname##_dec)(a, r);          \
            for (; r + AV_DEC_R <= r1; r += AV_DEC_R) AV_NAME(fname##_declast)(a, r);                          \
            for (; r < r1; r++) AV_NAME(fname##_11)(a, r, 0);                                                  \
            return;                                                                                            \
        }                                                                                                      \
        const int64_t ng = a->layout.n_groups; /* ACT_Q8_32 groups of 4 blocks (chunked walk only) */         \
        for (int64_t rb = r0; rb < r1; rb += AV_BLOCK_ROWS) {                                                  \
            int64_t re = rb + AV_BLOCK_ROWS < r1 ? rb + AV_BLOCK_ROWS : r1;                                    \
            int64_t t = 0;                                                                                     \
            while (t + (BT) <= a->n_tokens) {                                                                  \
                if ((CHUNK) && (BR) == 1 && t > 0 && ng > AV_CHUNK_GROUPS && t + (CT) <= a->n_tokens) {        \
                    __m256 park[AV_BLOCK_ROWS][2 * (CT)];                                                      \
                    for (int64_t g0 = 0; g0 < ng; g0 += AV_CHUNK_GROUPS)                                       \
                        for (int64_t r = rb; r < re; r++)                                                      \
                            CHUNK(a, r, t, g0, g0 + AV_CHUNK_GROUPS < ng ? g0 + AV_CHUNK_GROUPS : ng, park[r - rb]); \
                    t += (CT);                                                                                 \
                    continue;                                                                                  \
                }                                                                                              \
                int64_t r = rb;                                                                                \
                /* the first pass over a block streams it from memory: prefetch ahead as decoding does */      \
                if (t == 0)                                                                                    \
                    for (; r + (BR) <= re && r + (AV_PF_TILES + 1) * (BR) <= r1; r += (BR)) AV_NAME(fname##_fullpf)(a, r, t); \
                for (; r + (BR) <= re; r += (BR)) AV_NAME(fname##_full)(a, r, t);                              \
                for (; r < re; r++) AV_NAME(fname##_rowtail)(a, r, t);                                         \
                t += (BT);                                                                                     \
            }                                                                                                  \
            for (; t < a->n_tokens; t++) {                                                                     \
                int64_t r = rb;                                                                                \
                for (; r + (BR) <= re; r += (BR)) AV_NAME(fname##_tok1)(a, r, t);                              \
                for (; r < re; r++) AV_NAME(fname##_11)(a, r, t);                                              \
            }                                                                                                  \
        }                                                                                                      \
    }

// Simple quants: a one-level and a two-level variant, picked by the activation layout.
#define AV_SIMPLE(name, TYPE)                                                                                  \
    AV_INL void AV_NAME(name##_t1)(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, const int pf) { \
        AV_NAME(simple_tile)(a, TYPE, r, t, R, T, pf, 1);                                                      \
    }                                                                                                          \
    AV_INL void AV_NAME(name##_t2)(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, const int pf) { \
        AV_NAME(simple_tile)(a, TYPE, r, t, R, T, pf, 0);                                                      \
    }                                                                                                          \
    static AV_TARGET void AV_NAME(name##_c1)(const qmm_args *a, int64_t r, int64_t t, int64_t g0, int64_t g1, __m256 *park) { \
        AV_NAME(simple_tile_chunk)(a, TYPE, r, t, AV_S_CT, g0, g1, park, 1);                                   \
    }                                                                                                          \
    static AV_TARGET void AV_NAME(name##_c2)(const qmm_args *a, int64_t r, int64_t t, int64_t g0, int64_t g1, __m256 *park) { \
        AV_NAME(simple_tile_chunk)(a, TYPE, r, t, AV_S_CT, g0, g1, park, 0);                                   \
    }                                                                                                          \
    AV_ROWS(name##_l1, AV_NAME(name##_t1), AV_S_BR, AV_S_BT, AV_NAME(name##_c1), AV_S_CT)                      \
    AV_ROWS(name##_l2, AV_NAME(name##_t2), AV_S_BR, AV_S_BT, AV_NAME(name##_c2), AV_S_CT)                      \
    static void AV_NAME(name)(const qmm_args *a, int64_t r0, int64_t r1) {                                    \
        if (a->layout.levels == 1) AV_NAME(name##_l1)(a, r0, r1);                                              \
        else AV_NAME(name##_l2)(a, r0, r1);                                                                    \
    }

AV_SIMPLE(rows_q4_0, PUNA_TYPE_Q4_0)
AV_SIMPLE(rows_q4_1, PUNA_TYPE_Q4_1)
AV_SIMPLE(rows_q5_0, PUNA_TYPE_Q5_0)
AV_SIMPLE(rows_q5_1, PUNA_TYPE_Q5_1)
AV_SIMPLE(rows_q8_0, PUNA_TYPE_Q8_0)

// K-quants: the one-level tiles; two levels go pair by pair.
#define AV_KQ(name, TYPE)                                                                                      \
    AV_INL void AV_NAME(name##_t1)(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, const int pf) { \
        AV_NAME(k_tile1)(a, TYPE, r, t, R, T, pf);                                                             \
    }                                                                                                          \
    AV_ROWS(name##_l1, AV_NAME(name##_t1), AV_K_BR, AV_K_BT, AV_NAME_no_chunk_fn, 1)                           \
    static AV_TARGET void AV_NAME(name)(const qmm_args *a, int64_t r0, int64_t r1) {                          \
        if (a->layout.levels == 1) {                                                                           \
            AV_NAME(name##_l1)(a, r0, r1);                                                                     \
            return;                                                                                            \
        }                                                                                                      \
        for (int64_t t = 0; t < a->n_tokens; t++)                                                              \
            for (int64_t r = r0; r < r1; r++) AV_NAME(k_tile2)(a, TYPE, r, t);                                 \
    }

AV_KQ(rows_q4_K, PUNA_TYPE_Q4_K)
AV_KQ(rows_q5_K, PUNA_TYPE_Q5_K)
AV_KQ(rows_q6_K, PUNA_TYPE_Q6_K)

// Float weights: 2 x 2 tiles, no decode special case (they are small: norms, LoRA-sized matrices).
#define AV_FLOAT(name, TYPE)                                                                                   \
    static AV_TARGET void AV_NAME(name##_22)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(float_tile)(a, TYPE, r, t, 2, 2); } \
    static AV_TARGET void AV_NAME(name##_12)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(float_tile)(a, TYPE, r, t, 1, 2); } \
    static AV_TARGET void AV_NAME(name##_21)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(float_tile)(a, TYPE, r, t, 2, 1); } \
    static AV_TARGET void AV_NAME(name##_11)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(float_tile)(a, TYPE, r, t, 1, 1); } \
    static void AV_NAME(name)(const qmm_args *a, int64_t r0, int64_t r1) {                                    \
        for (int64_t rb = r0; rb < r1; rb += 32) {                                                             \
            int64_t re = rb + 32 < r1 ? rb + 32 : r1;                                                          \
            int64_t t = 0;                                                                                     \
            for (; t + 2 <= a->n_tokens; t += 2) {                                                             \
                int64_t r = rb;                                                                                \
                for (; r + 2 <= re; r += 2) AV_NAME(name##_22)(a, r, t);                                       \
                for (; r < re; r++) AV_NAME(name##_12)(a, r, t);                                               \
            }                                                                                                  \
            for (; t < a->n_tokens; t++) {                                                                     \
                int64_t r = rb;                                                                                \
                for (; r + 2 <= re; r += 2) AV_NAME(name##_21)(a, r, t);                                       \
                for (; r < re; r++) AV_NAME(name##_11)(a, r, t);                                               \
            }                                                                                                  \
        }                                                                                                      \
    }

#define AV_BNB(name, BITS)                                                                                     \
    AV_INL void AV_NAME(name##_t1)(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, const int pf) { \
        AV_NAME(bnb_tile)(a, BITS, r, t, R, T, pf, 1);                                                         \
    }                                                                                                          \
    AV_INL void AV_NAME(name##_t2)(const qmm_args *a, int64_t r, int64_t t, const int R, const int T, const int pf) { \
        AV_NAME(bnb_tile)(a, BITS, r, t, R, T, pf, 0);                                                         \
    }                                                                                                          \
    AV_ROWS(name##_l1, AV_NAME(name##_t1), 2, 2, AV_NAME_no_chunk_fn, 1)                                       \
    AV_ROWS(name##_l2, AV_NAME(name##_t2), 2, 2, AV_NAME_no_chunk_fn, 1)                                       \
    static void AV_NAME(name)(const qmm_args *a, int64_t r0, int64_t r1) {                                    \
        if ((BITS) == 4 && AV_NAME(bnb4_dec64_fits)(a)) AV_NAME(rows_bnb4_dec64)(a, r0, r1);                   \
        else if ((BITS) == 4 && !AV_VNNI && AV_NAME(bnb4_b64_fits)(a)) AV_NAME(rows_bnb4_b64)(a, r0, r1);     \
        else if (a->layout.levels == 1) AV_NAME(name##_l1)(a, r0, r1);                                         \
        else AV_NAME(name##_l2)(a, r0, r1);                                                                    \
    }

AV_BNB(rows_bnb4, 4)
AV_BNB(rows_bnb8, 8)

AV_FLOAT(rows_f32, PUNA_TYPE_F32)
AV_FLOAT(rows_f16, PUNA_TYPE_F16)
AV_FLOAT(rows_bf16, PUNA_TYPE_BF16)

static void AV_NAME(fill)(int type, qmm_kernel *k) {
    memset(k, 0, sizeof *k);
    k->quantize = AV_NAME(quantize);
    k->act_format = ACT_Q8_32;
    k->row_tile = AV_DEC_R;
    switch (type) {
    case PUNA_TYPE_Q4_0: k->rows = AV_NAME(rows_q4_0); k->aux = AUX_NEG_SUM8; break;
    case PUNA_TYPE_Q4_1: k->rows = AV_NAME(rows_q4_1); k->aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q5_0: k->rows = AV_NAME(rows_q5_0); k->aux = AUX_NEG_SUM16; break;
    case PUNA_TYPE_Q5_1: k->rows = AV_NAME(rows_q5_1); k->aux = AUX_SUM_F32; break;
    case PUNA_TYPE_Q8_0: k->rows = AV_NAME(rows_q8_0); break;
    case PUNA_TYPE_Q4_K: k->rows = AV_NAME(rows_q4_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q5_K: k->rows = AV_NAME(rows_q5_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_Q6_K: k->rows = AV_NAME(rows_q6_K); k->act_format = ACT_Q8_256; break;
    case PUNA_TYPE_F32: k->rows = AV_NAME(rows_f32); k->quantize = NULL; break;
    case PUNA_TYPE_F16: k->rows = AV_NAME(rows_f16); k->quantize = NULL; break;
    case PUNA_TYPE_BF16: k->rows = AV_NAME(rows_bf16); k->quantize = NULL; break;
    case PUNA_TYPE_BNB4: k->rows = AV_NAME(rows_bnb4); k->aux = AV_VNNI ? AUX_NEG_SUM128 : AUX_NONE; break;
    case PUNA_TYPE_BNB_INT8: k->rows = AV_NAME(rows_bnb8); k->aux = AV_VNNI ? AUX_NEG_SUM128 : AUX_NONE; break;
    default: break;
    }
}

#undef AV_ROWS
#undef AV_SIMPLE
#undef AV_KQ
#undef AV_FLOAT
#undef AV_BNB
#undef AV_INL
#undef AV_UNROLL
