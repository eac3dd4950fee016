// AVX2 kernels, included twice by kernels_x86_avx2.c: with AV_VNNI 0 (AVX2 + FMA + F16C: 4-byte
// sums from vpmaddubsw + vpmaddwd) and AV_VNNI 1 (AVX-VNNI's vpdpbusd / vpdpwssd). Each including
// pass defines AV_NAME(x) and AV_TARGET. Arithmetic as defined in kernels_internal.h: a ymm holds
// the 4 lanes of 2 blocks, so the 16 accumulators of a (row, token) pair are two ymm, slots 0-1
// and slots 2-3 of a 4-block group.

#define AV_INL static inline __attribute__((always_inline)) AV_TARGET
// Tile loops have constant trip counts once inlined; they must unroll fully so tiles live in registers.
#if defined(__clang__)
#define AV_UNROLL _Pragma("clang loop unroll(full)")
#else
#define AV_UNROLL _Pragma("GCC unroll 16")
#endif

// acc + 4-byte lane sums of u8 a x s8 b
AV_INL __m256i AV_NAME(dot4)(__m256i acc, __m256i a, __m256i b) {
#if AV_VNNI
    return _mm256_dpbusd_avx_epi32(acc, a, b);
#else
    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
    return _mm256_add_epi32(acc, p);
#endif
}

// acc + int16 pairs p16 weighted by int16 scales sc (int32 lanes)
AV_INL __m256i AV_NAME(wsum)(__m256i acc, __m256i p16, __m256i sc) {
#if AV_VNNI
    return _mm256_dpwssd_avx_epi32(acc, p16, sc);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, sc));
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

AV_INL int32_t AV_NAME(hsum)(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    return _mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 1);
}

static AV_TARGET void AV_NAME(quantize)(const float *x, int64_t cols, const act_layout *l, int aux, uint8_t *act,
                                        int64_t t0, int64_t t1) {
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
                _mm_storeu_ps(d + 4 * b, _mm_set1_ps(db));
                if (aux == AUX_NONE) continue;
                // lane j: X of weights 4j..4j+3 plus 16+4j..16+4j+3
                __m256i s01 = _mm256_add_epi32(X0[0], X1[0]), s23 = _mm256_add_epi32(X0[1], X1[1]);
                __m256i h = _mm256_hadd_epi32(s01, s23);
                h = _mm256_hadd_epi32(h, h);                     // [j0 j2 j0 j2 | j1 j3 j1 j3]
                __m128i v = _mm_unpacklo_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                v = aux == AUX_NEG_SUM8    ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 3))
                    : aux == AUX_NEG_SUM16 ? _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(v, 4))
                                           : _mm_castps_si128(_mm_cvtepi32_ps(v));
                _mm_storeu_si128((__m128i *)(base + l->aux_off + g * 64 + 16 * k), v);
            }
        } else {
            int32_t *bsums = (int32_t *)(base + l->aux_off);
            for (int64_t b = 0; b < l->n_blocks; b++) {
                const float *xb = xt + 256 * b;
                float amax = AV_NAME(amax)(xb, 256, 0);
                float id = amax > 0 ? 127.0f / amax : 0.0f;
                d[b] = amax / 127.0f / 256.0f;
                __m256 vid = _mm256_set1_ps(id), vid256 = _mm256_set1_ps(id * 256.0f);
                for (int i = 0; i < 16; i++) {
                    __m128i q1, q2;
                    __m256i X[2];
                    AV_NAME(quantize16)(xb + 16 * i, vid, vid256, l->levels, &q1, &q2, X);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 16 * i), q1);
                    _mm_storeu_si128((__m128i *)(qs + ACT256_STRIDE * b + 256 + 16 * i), q2);
                    __m256i x16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(X[0], X[1]), 0xd8);
                    _mm256_storeu_si256((__m256i *)(qs + ACT256_STRIDE * b + ACT256_X16 + 32 * i), x16);
                    bsums[16 * b + i] = AV_NAME(hsum)(_mm256_add_epi32(X[0], X[1]));
                }
            }
        }
    }
}

// ---- simple quants: 2 blocks per ymm --------------------------------------------------------

// Blocks b, b+1 of a row: |codes| or unsigned codes (lo: weights 0..15 of each block, hi: 16..31),
// the per-lane scales, mins, and for Q8_0 the signed codes to take the signs from.
typedef struct { __m256i lo, hi, slo, shi; __m256 dw, mw; } AV_NAME(pair);

AV_INL __m256i AV_NAME(load2x16)(const uint8_t *p0, const uint8_t *p1) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p0)),
                                   _mm_loadu_si128((const __m128i *)p1), 1);
}

AV_INL __m256 AV_NAME(scales2)(const uint8_t *p0, const uint8_t *p1) {
    return _mm256_set_m128(_mm_set1_ps(_cvtsh_ss(kq_load16(p1))), _mm_set1_ps(_cvtsh_ss(kq_load16(p0))));
}

// bit i of each block's 16-bit qh half as 0x10 in byte i
AV_INL __m256i AV_NAME(bits)(uint32_t h0, uint32_t h1) {
    const __m256i shuf = _mm256_set_epi64x(0x0101010101010101LL, 0, 0x0101010101010101LL, 0);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_set_epi32(0, (int)h1, 0, (int)h1, 0, (int)h0, 0, (int)h0);
    v = _mm256_shuffle_epi8(v, shuf);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel), _mm256_set1_epi8(0x10));
}

AV_INL void AV_NAME(unpack)(int type, const uint8_t *row, int64_t b, int both, AV_NAME(pair) *w) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int64_t bs = type == PUNA_TYPE_Q4_0 ? 18 : type == PUNA_TYPE_Q4_1 ? 20 : type == PUNA_TYPE_Q5_0 ? 22
                     : type == PUNA_TYPE_Q5_1 ? 24 : 34;
    const uint8_t *p0 = row + bs * b, *p1 = both ? p0 + bs : p0;  // a lone block is paired with itself, then masked
    w->mw = _mm256_setzero_ps();
    if (type == PUNA_TYPE_Q8_0) {
        __m256i a = AV_NAME(load2x16)(p0 + 2, p1 + 2), c = AV_NAME(load2x16)(p0 + 18, p1 + 18);
        w->slo = a;
        w->shi = c;
        w->lo = _mm256_abs_epi8(a);
        w->hi = _mm256_abs_epi8(c);
    } else {
        const int off = type == PUNA_TYPE_Q4_0 ? 2 : type == PUNA_TYPE_Q4_1 ? 4 : type == PUNA_TYPE_Q5_0 ? 6 : 8;
        __m256i q = AV_NAME(load2x16)(p0 + off, p1 + off);
        w->lo = _mm256_and_si256(q, m4);
        w->hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (type == PUNA_TYPE_Q5_0 || type == PUNA_TYPE_Q5_1) {
            const int ho = type == PUNA_TYPE_Q5_0 ? 2 : 4;
            uint32_t h0 = kq_load32(p0 + ho), h1 = kq_load32(p1 + ho);
            w->lo = _mm256_or_si256(w->lo, AV_NAME(bits)(h0 & 0xffff, h1 & 0xffff));
            w->hi = _mm256_or_si256(w->hi, AV_NAME(bits)(h0 >> 16, h1 >> 16));
        }
        if (type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1) w->mw = AV_NAME(scales2)(p0 + 2, p1 + 2);
    }
    w->dw = AV_NAME(scales2)(p0, p1);
    if (!both) {
        const __m256 keep = _mm256_castsi256_ps(_mm256_set_epi32(0, 0, 0, 0, -1, -1, -1, -1));
        w->dw = _mm256_and_ps(w->dw, keep);
        w->mw = _mm256_and_ps(w->mw, keep);
        w->lo = _mm256_and_si256(w->lo, _mm256_castps_si256(keep));
        w->hi = _mm256_and_si256(w->hi, _mm256_castps_si256(keep));
    }
}

// blocks 4g + 2h, 4g + 2h + 1 (h = 0, 1) of one (row, token) pair: acc is slots 2h, 2h + 1
AV_INL __m256 AV_NAME(step)(__m256 acc, int type, const AV_NAME(pair) *w, const uint8_t *x, const act_layout *L, int64_t g,
                            int h) {
    const uint8_t *xq = x + L->qs_off + 256 * g + 32 * h;
    __m256i x1l = _mm256_load_si256((const __m256i *)xq), x1h = _mm256_load_si256((const __m256i *)(xq + 64));
    if (type == PUNA_TYPE_Q8_0) {
        x1l = _mm256_sign_epi8(x1l, w->slo);
        x1h = _mm256_sign_epi8(x1h, w->shi);
    }
    __m256i i1 = AV_NAME(dot4)(_mm256_setzero_si256(), w->lo, x1l);
    i1 = AV_NAME(dot4)(i1, w->hi, x1h);
    __m256i aux = type == PUNA_TYPE_Q4_0 || type == PUNA_TYPE_Q5_0
                      ? _mm256_load_si256((const __m256i *)(x + L->aux_off + 64 * g + 32 * h))
                      : _mm256_setzero_si256();
    const __m256 dx = _mm256_load_ps((const float *)(x + L->d_off) + 16 * g + 8 * h);
    if (L->levels == 1) {
        // q2 is zero: p / 256 = i1 + aux / 256 (aux a multiple of 256), scale (256 dw) dx
        __m256i ia = _mm256_add_epi32(i1, _mm256_srai_epi32(aux, 8));
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(w->dw, _mm256_set1_ps(256.0f)), dx), _mm256_cvtepi32_ps(ia), acc);
    } else {
        __m256i x2l = _mm256_load_si256((const __m256i *)(xq + 128)), x2h = _mm256_load_si256((const __m256i *)(xq + 192));
        if (type == PUNA_TYPE_Q8_0) {
            x2l = _mm256_sign_epi8(x2l, w->slo);
            x2h = _mm256_sign_epi8(x2h, w->shi);
        }
        __m256i i2 = AV_NAME(dot4)(aux, w->lo, x2l);
        i2 = AV_NAME(dot4)(i2, w->hi, x2h);
        __m256i ia = _mm256_add_epi32(_mm256_slli_epi32(i1, 8), i2);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(w->dw, dx), _mm256_cvtepi32_ps(ia), acc);
    }
    if (type == PUNA_TYPE_Q4_1 || type == PUNA_TYPE_Q5_1)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(w->mw, dx), _mm256_load_ps((const float *)(x + L->aux_off) + 16 * g + 8 * h), acc);
    return acc;
}

AV_INL void AV_NAME(simple_tile)(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 32, rb = a->row_bytes, tb = L->token_bytes;
    __m256 acc[2][2][2];
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    for (int64_t b = 0; b < nb; b += 2) {
        const int both = b + 1 < nb, h = (int)((b / 2) % 2);
        AV_UNROLL for (int i = 0; i < R; i++) {
            AV_NAME(pair) wp;
            AV_NAME(unpack)(type, w + i * rb, b, both, &wp);
            AV_UNROLL for (int j = 0; j < T; j++) acc[i][j][h] = AV_NAME(step)(acc[i][j][h], type, &wp, x0 + j * tb, L, b / 4, h);
        }
    }
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++)
        a->y[(t + j) * a->rows + r + i] = AV_NAME(reduce16)(acc[i][j][0], acc[i][j][1]);
}

// ---- K-quants -----------------------------------------------------------------------------------

AV_INL __m256i AV_NAME(sc2)(int a, int b) { return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a)); }

// Codes of 32 consecutive weights per ymm (natural order) and, per ymm, its int16 scale vector.
typedef struct { __m256i q[8]; __m256i sc[8]; __m256i msc[2]; float d, dmin; } AV_NAME(kblock);

AV_INL void AV_NAME(unpack_k)(int type, const uint8_t *p, AV_NAME(kblock) *k) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    if (type == PUNA_TYPE_Q6_K) {
        k->d = _cvtsh_ss(kq_load16(p + 208));
        const int8_t *scales = (const int8_t *)p + 192;
        __m128i sc8 = _mm_loadu_si128((const __m128i *)scales);
        k->msc[0] = _mm256_cvtepi8_epi32(sc8);
        k->msc[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(sc8, 8));
        const __m256i m2 = _mm256_set1_epi8(0x03);
        AV_UNROLL for (int h = 0; h < 2; h++) {
            __m256i l0 = _mm256_loadu_si256((const __m256i *)(p + 64 * h)), l1 = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32));
            __m256i hb = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
            __m256i c0 = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
            __m256i c1 = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
            __m256i c2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
            __m256i c3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
            k->q[4 * h] = c0;
            k->q[4 * h + 1] = c1;
            k->q[4 * h + 2] = c2;
            k->q[4 * h + 3] = c3;
        }
        AV_UNROLL for (int v = 0; v < 8; v++) k->sc[v] = AV_NAME(sc2)(scales[2 * v], scales[2 * v + 1]);
        return;
    }
    const int q5 = type == PUNA_TYPE_Q5_K;
    k->d = _cvtsh_ss(kq_load16(p));
    k->dmin = _cvtsh_ss(kq_load16(p + 2));
    int sc[8], m[8];
    AV_UNROLL for (int s = 0; s < 8; s++) kq_scale_min(p + 4, s, &sc[s], &m[s]);
    k->msc[0] = _mm256_set_epi32(m[3], m[3], m[2], m[2], m[1], m[1], m[0], m[0]);
    k->msc[1] = _mm256_set_epi32(m[7], m[7], m[6], m[6], m[5], m[5], m[4], m[4]);
    const uint8_t *qs = p + (q5 ? 48 : 16);
    __m256i hb = q5 ? _mm256_loadu_si256((const __m256i *)(p + 16)) : _mm256_setzero_si256();
    AV_UNROLL for (int c = 0; c < 4; c++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        if (q5) {
            const __m256i one = _mm256_set1_epi8(1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), one), 4));
        }
        k->q[2 * c] = lo;
        k->q[2 * c + 1] = hi;
        k->sc[2 * c] = _mm256_set1_epi16((short)sc[2 * c]);
        k->sc[2 * c + 1] = _mm256_set1_epi16((short)sc[2 * c + 1]);
    }
}

AV_INL float AV_NAME(k_step)(float acc, int type, const AV_NAME(kblock) *w, const uint8_t *x, const act_layout *L, int64_t b) {
    const uint8_t *xq = x + L->qs_off + ACT256_STRIDE * b;
    __m256i i1 = _mm256_setzero_si256(), i2 = i1;
    AV_UNROLL for (int v = 0; v < 8; v++) {
        i1 = AV_NAME(wsum)(i1, _mm256_maddubs_epi16(w->q[v], _mm256_load_si256((const __m256i *)(xq + 32 * v))), w->sc[v]);
        i2 = AV_NAME(wsum)(i2, _mm256_maddubs_epi16(w->q[v], _mm256_load_si256((const __m256i *)(xq + 256 + 32 * v))), w->sc[v]);
    }
    const int32_t *bs = (const int32_t *)(x + L->aux_off) + 16 * b;
    __m256i mb = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_load_si256((const __m256i *)bs), w->msc[0]),
                                  _mm256_mullo_epi32(_mm256_load_si256((const __m256i *)(bs + 8)), w->msc[1]));
    const float dx = ((const float *)(x + L->d_off))[b];
    int64_t A = 256 * (int64_t)AV_NAME(hsum)(i1) + AV_NAME(hsum)(i2);
    if (type == PUNA_TYPE_Q6_K) return fmaf(w->d * dx, (float)(A - 32 * (int64_t)AV_NAME(hsum)(mb)), acc);
    acc = fmaf(w->d * dx, (float)A, acc);
    return fmaf(-(w->dmin * dx), (float)AV_NAME(hsum)(mb), acc);
}

AV_INL void AV_NAME(k_tile)(const qmm_args *a, int type, int64_t r, int64_t t, const int R, const int T) {
    const act_layout *L = &a->layout;
    const int64_t nb = a->cols / 256, rb = a->row_bytes, tb = L->token_bytes;
    const int64_t bytes = type == PUNA_TYPE_Q4_K ? 144 : type == PUNA_TYPE_Q5_K ? 176 : 210;
    float acc[2][2];
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) acc[i][j] = 0;
    const uint8_t *w = a->w + r * rb, *x0 = a->act + t * tb;
    for (int64_t b = 0; b < nb; b++) {
        AV_UNROLL for (int i = 0; i < R; i++) {
            AV_NAME(kblock) kb;
            AV_NAME(unpack_k)(type, w + i * rb + bytes * b, &kb);
            AV_UNROLL for (int j = 0; j < T; j++) acc[i][j] = AV_NAME(k_step)(acc[i][j], type, &kb, x0 + j * tb, L, b);
        }
    }
    AV_UNROLL for (int i = 0; i < R; i++) AV_UNROLL for (int j = 0; j < T; j++) a->y[(t + j) * a->rows + r + i] = acc[i][j];
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

// ---- row drivers --------------------------------------------------------------------------------

#define AV_ROWS(fname, TILE, TYPE)                                                                          \
    static AV_TARGET void AV_NAME(fname##_22)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(TILE)(a, TYPE, r, t, 2, 2); } \
    static AV_TARGET void AV_NAME(fname##_12)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(TILE)(a, TYPE, r, t, 1, 2); } \
    static AV_TARGET void AV_NAME(fname##_21)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(TILE)(a, TYPE, r, t, 2, 1); } \
    static AV_TARGET void AV_NAME(fname##_11)(const qmm_args *a, int64_t r, int64_t t) { AV_NAME(TILE)(a, TYPE, r, t, 1, 1); } \
    static void AV_NAME(fname)(const qmm_args *a, int64_t r0, int64_t r1) {                                \
        for (int64_t rb = r0; rb < r1; rb += 32) {                                                          \
            int64_t re = rb + 32 < r1 ? rb + 32 : r1;                                                       \
            int64_t t = 0;                                                                                  \
            for (; t + 2 <= a->n_tokens; t += 2) {                                                          \
                int64_t r = rb;                                                                             \
                for (; r + 2 <= re; r += 2) AV_NAME(fname##_22)(a, r, t);                                   \
                for (; r < re; r++) AV_NAME(fname##_12)(a, r, t);                                           \
            }                                                                                               \
            for (; t < a->n_tokens; t++) {                                                                  \
                int64_t r = rb;                                                                             \
                for (; r + 2 <= re; r += 2) AV_NAME(fname##_21)(a, r, t);                                   \
                for (; r < re; r++) AV_NAME(fname##_11)(a, r, t);                                           \
            }                                                                                               \
        }                                                                                                   \
    }

AV_ROWS(rows_q4_0, simple_tile, PUNA_TYPE_Q4_0)
AV_ROWS(rows_q4_1, simple_tile, PUNA_TYPE_Q4_1)
AV_ROWS(rows_q5_0, simple_tile, PUNA_TYPE_Q5_0)
AV_ROWS(rows_q5_1, simple_tile, PUNA_TYPE_Q5_1)
AV_ROWS(rows_q8_0, simple_tile, PUNA_TYPE_Q8_0)
AV_ROWS(rows_q4_K, k_tile, PUNA_TYPE_Q4_K)
AV_ROWS(rows_q5_K, k_tile, PUNA_TYPE_Q5_K)
AV_ROWS(rows_q6_K, k_tile, PUNA_TYPE_Q6_K)
AV_ROWS(rows_f32, float_tile, PUNA_TYPE_F32)
AV_ROWS(rows_f16, float_tile, PUNA_TYPE_F16)
AV_ROWS(rows_bf16, float_tile, PUNA_TYPE_BF16)

static void AV_NAME(fill)(int type, qmm_kernel *k) {
    memset(k, 0, sizeof *k);
    k->quantize = AV_NAME(quantize);
    k->act_format = ACT_Q8_32;
    k->row_tile = 2;
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
    default: break;
    }
}

#undef AV_ROWS
#undef AV_INL
#undef AV_UNROLL
