/* The int8 x int8 product's machinery, shared by the GEMM (igemm.c) and the attention built on it
 * (attention.c): activation rows quantized to bytes, micro-tiles of MR rows x TILE_CHANNELS packed
 * channels summed in 32-bit integers for this build's instruction set, and their scaled float
 * outputs. The layouts are described in igemm.c. */
#ifndef MINICPMV_IGEMM_H
#define MINICPMV_IGEMM_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vecmath.h"

#define PANEL 16 /* output channels per packed panel */

static inline int64_t round4(int64_t n) { return (n + 3) / 4 * 4; }

static inline int64_t panels_of(int64_t n) { return (n + PANEL - 1) / PANEL; }

/* How a row of activations is stored: SIGNED, round(x / s) in [-127, 127] with s = absmax / 127;
 * OFFSET, the same + 128 (vpdpbusd's unsigned side); NARROW, 7 bits from the row's own range,
 * round(x / s) + z in [0, 127] with s = (max - min) / 127 and z the row's zero point (min and max
 * taken with 0, so that z is in [0, 127]): unsigned as vpmaddubsw wants it, no sign step. */
enum { SIGNED, OFFSET, NARROW };

/* What the caller's packed weights allow (`narrow` of minicpmv_igemm and igemm_args): WIDE, 8-bit
 * weights; NARROW_BOTH, weights in [-63, 63] and activation rows in 7 bits where that is faster
 * (NARROW, AVX2); NARROW_WEIGHTS, weights in [-63, 63] and 8-bit activations (OFFSET on AVX2 too:
 * no sign step). VNNI builds take every weight the same way, with OFFSET rows. */
enum { WIDE, NARROW_BOTH, NARROW_WEIGHTS };

/* one row of K floats -> K4 bytes (zero padded), its scale and zero point */
static inline void quantize_row(const float *src, int64_t K, int64_t K4, int8_t *dst, float *scale_out,
                                int32_t *zero_out, const int mode) {
    __m256 vmax = _mm256_setzero_ps(), vmin = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        const __m256 v = _mm256_loadu_ps(src + k);
        vmax = _mm256_max_ps(vmax, v), vmin = _mm256_min_ps(vmin, v);
    }
    float hi[8], lo[8], top = 0.f, bottom = 0.f;
    _mm256_storeu_ps(hi, vmax), _mm256_storeu_ps(lo, vmin);
    for (int i = 0; i < 8; i++) top = fmaxf(top, hi[i]), bottom = fminf(bottom, lo[i]);
    for (; k < K; k++) top = fmaxf(top, src[k]), bottom = fminf(bottom, src[k]);
    const float scale = (mode == NARROW ? top - bottom : fmaxf(top, -bottom)) / 127.f;
    const float inv = scale > 0.f ? 1.f / scale : 0.f;
    const int32_t zero = mode == NARROW ? _mm_cvtss_si32(_mm_set_ss(-bottom * inv)) : mode == OFFSET ? 128 : 0;
    const __m256i lowest = _mm256_set1_epi32(mode == NARROW ? 0 : -127), highest = _mm256_set1_epi32(127);
    const __m128i flip = _mm_set1_epi8(mode == OFFSET ? (char)0x80 : 0);
    for (k = 0; k + 8 <= K; k += 8) {
        __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + k), _mm256_set1_ps(inv)));
        q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, _mm256_set1_epi32(mode == NARROW ? zero : 0)), lowest), highest);
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(dst + k), _mm_xor_si128(_mm_packs_epi16(words, words), flip));
    }
    for (; k < K; k++) {
        int32_t q = _mm_cvtss_si32(_mm_set_ss(src[k] * inv)) + (mode == NARROW ? zero : 0);
        q = q < (mode == NARROW ? 0 : -127) ? (mode == NARROW ? 0 : -127) : q > 127 ? 127 : q;
        dst[k] = (int8_t)(q ^ (mode == OFFSET ? 0x80 : 0));
    }
    for (; k < K4; k++) dst[k] = 0;
    *scale_out = scale, *zero_out = zero;
}

/* tanh-approximated GELU: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2 / pi) (x + 0.044715 x^3);
 * applied to the outputs in registers, before they are stored */
static inline __m256 gelu8(__m256 x) {
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(x, x), x), _mm256_set1_ps(0.044715f), x);
    const __m256 e = exp8(_mm256_mul_ps(inner, _mm256_set1_ps(-2.f * 0.7978845608f)));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), e));
}

static inline float gelu1(float x) { return x / (1.f + expf(-2.f * 0.7978845608f * (x + 0.044715f * x * x * x))); }

static inline float silu1(float x) { return x / (1.f + expf(-x)); }

/* Rows whose quantized activations stay in L2 while every channel panel passes them */
#define BLOCK_ROWS 96
/* Outputs from this size up are stored past the caches (store8) */
#define STREAM_BYTES (4 << 20)

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* MR rows x 2 panels (32 channels): 16 accumulators of 16 lanes */
#define MR 8
#define STEP 2
#define VNNI 1
typedef __m512i acc_t;
static inline void tile(const int8_t *xq, int64_t K4, const int8_t *p0, const int8_t *p1, acc_t acc[MR][2], int narrow) {
    (void)narrow; /* VNNI: always 8 bits */
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int64_t k = 0; k < K4; k += 4) {
        const __m512i w0 = _mm512_loadu_si512((const void *)(p0 + k * PANEL));
        const __m512i w1 = _mm512_loadu_si512((const void *)(p1 + k * PANEL));
        for (int r = 0; r < MR; r++) {
            int32_t four; /* x + 128: the unsigned side */
            memcpy(&four, xq + r * K4 + k, 4);
            const __m512i a = _mm512_set1_epi32(four);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a, w0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a, w1);
        }
    }
}

/* a function of 8 lanes applied to both halves of 16 */
#define BY_HALVES(fn, v) _mm512_insertf32x8(_mm512_castps256_ps512(fn(_mm512_castps512_ps256(v))), fn(_mm512_extractf32x8_ps(v, 1)), 1)

/* 16 outputs of one row: (sum - 128 * colsum) * x_scale * w_scale + bias, masked at the edge; then
 * the GELU, or times silu(gate) where a gate row is given (store8) */
static inline void store16(float *dst, __m512i sum, const int32_t *colsum, const float *wscales, const float *bias,
                           float xs, int64_t valid, int gelu, const float *gate) {
    const __mmask16 keep = valid >= 16 ? 0xFFFF : (__mmask16)((1u << valid) - 1);
    const __m512i exact = _mm512_sub_epi32(sum, _mm512_maskz_loadu_epi32(keep, colsum));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(_mm512_set1_ps(xs), _mm512_maskz_loadu_ps(keep, wscales)));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias));
    if (gelu) v = BY_HALVES(gelu8, v);
    if (gate) {
        const __m512 g = _mm512_maskz_loadu_ps(keep, gate);
        v = _mm512_mul_ps(v, BY_HALVES(silu8, g));
    }
    _mm512_mask_storeu_ps(dst, keep, v);
}
#else
/* 256 bits: a panel is two registers of 8 channels; 4 rows x 2 registers of accumulators, with
 * the weights and the activations' broadcast, stay in the 16 vector registers (with 6 rows GCC
 * moves and stores accumulators at every step: 2.3x instead of 2.7x the AVX2 product with VNNI) */
#define STEP 1
#define MR 4
typedef __m256i acc_t;
#if defined(DPBUSD256)
#define VNNI 1 /* AVX-VNNI: activations offset to unsigned, as on AVX-512 */
#else
#define VNNI 0
#endif

/* 4 products per 32-bit lane: VNNI's one instruction, or (SIGNED) |w| as vpmaddubsw's unsigned
 * side and the sign of w moved onto x (|x|, |w| <= 127, so its pair sums cannot saturate) */
static inline __m256i dot4(__m256i acc, __m256i a, __m256i w, __m256i wabs) {
#if VNNI
    (void)wabs;
    return DPBUSD256(acc, a, w);
#else
    const __m256i pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

/* accumulators in a local array: on the caller's GCC adds a move per product and stores per step */
static void tile_bytes(const int8_t *xq, int64_t K4, const int8_t *p0, acc_t out[MR][2]) {
    acc_t acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < K4; k += 4) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL + 32));
        const __m256i wabs0 = _mm256_abs_epi8(w0), wabs1 = _mm256_abs_epi8(w1);
        for (int r = 0; r < MR; r++) {
            int32_t four;
            memcpy(&four, xq + r * K4 + k, 4);
            const __m256i a = _mm256_set1_epi32(four);
            acc[r][0] = dot4(acc[r][0], a, w0, wabs0);
            acc[r][1] = dot4(acc[r][1], a, w1, wabs1);
        }
    }
    memcpy(out, acc, sizeof(acc));
}

#if !VNNI
/* NARROW: x unsigned in 7 bits against weights in [-63, 63], so a vpmaddubsw pair sum is at most
 * 127 * 63 * 2 = 16002 and two k-steps' pairs add in 16 bits before one vpmaddwd widens them:
 * 5 instructions per 64 products instead of 8 (SIGNED). The weights are memory operands and the
 * 8 accumulators named locals, so that the loop fits AVX2's 16 registers without spilling (an
 * accumulator array cost 15-20%: GCC kept 3 of them on the stack). */
static inline __m256i pair_sum(__m256i a, __m256i b, const int8_t *w, const int8_t *v) {
    const __m256i t = _mm256_maddubs_epi16(a, _mm256_loadu_si256((const __m256i *)w));
    const __m256i u = _mm256_maddubs_epi16(b, _mm256_loadu_si256((const __m256i *)v));
    return _mm256_madd_epi16(_mm256_add_epi16(t, u), _mm256_set1_epi16(1));
}

/* one row's two 4-steps k, k + 4 (x: 8 bytes; w: the panel at k, 64 bytes a step; `pair` 0 for
 * an odd last step, paired with nothing) into its two halves' accumulators */
static inline void narrow_row(const int8_t *x, const int8_t *w, int pair, __m256i *lo, __m256i *hi) {
    int32_t four, next = 0;
    memcpy(&four, x, 4);
    if (pair) memcpy(&next, x + 4, 4);
    const __m256i a = _mm256_set1_epi32(four), b = _mm256_set1_epi32(next);
    const int8_t *v = pair ? w + 4 * PANEL : w; /* b = 0 there: any readable bytes */
    *lo = _mm256_add_epi32(*lo, pair_sum(a, b, w, v));
    *hi = _mm256_add_epi32(*hi, pair_sum(a, b, w + 32, v + 32));
}

static void tile_narrow(const int8_t *xq, int64_t K4, const int8_t *p0, acc_t out[MR][2]) {
    __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
    int64_t k = 0;
#pragma GCC unroll 2 /* 10% more: two steps' loads and adds interleave */
    for (; k + 8 <= K4; k += 8) {
        const int8_t *w = p0 + k * PANEL;
        narrow_row(xq + k, w, 1, &a0, &b0), narrow_row(xq + K4 + k, w, 1, &a1, &b1);
        narrow_row(xq + 2 * K4 + k, w, 1, &a2, &b2), narrow_row(xq + 3 * K4 + k, w, 1, &a3, &b3);
    }
    if (k < K4) {
        const int8_t *w = p0 + k * PANEL;
        narrow_row(xq + k, w, 0, &a0, &b0), narrow_row(xq + K4 + k, w, 0, &a1, &b1);
        narrow_row(xq + 2 * K4 + k, w, 0, &a2, &b2), narrow_row(xq + 3 * K4 + k, w, 0, &a3, &b3);
    }
    out[0][0] = a0, out[0][1] = b0, out[1][0] = a1, out[1][1] = b1;
    out[2][0] = a2, out[2][1] = b2, out[3][0] = a3, out[3][1] = b3;
}

/* NARROW_WEIGHTS: x offset to unsigned 8 bits (OFFSET) against weights in [-63, 63]: a vpmaddubsw
 * pair sum is at most 255 * 63 * 2 = 32130, so no sign step: 3 instructions per 32 products
 * instead of 4 (SIGNED), and activation rows keep 8 bits (an LLM's prefill: its rows have outlier
 * channels, which 7 bits would round twice as coarsely). Registers as in tile_narrow. */
static inline void offset_row(const int8_t *x, const int8_t *w, __m256i *lo, __m256i *hi) {
    int32_t four;
    memcpy(&four, x, 4);
    const __m256i a = _mm256_set1_epi32(four), ones = _mm256_set1_epi16(1);
    const __m256i t = _mm256_maddubs_epi16(a, _mm256_loadu_si256((const __m256i *)w));
    const __m256i u = _mm256_maddubs_epi16(a, _mm256_loadu_si256((const __m256i *)(w + 32)));
    *lo = _mm256_add_epi32(*lo, _mm256_madd_epi16(t, ones));
    *hi = _mm256_add_epi32(*hi, _mm256_madd_epi16(u, ones));
}

static void tile_offset(const int8_t *xq, int64_t K4, const int8_t *p0, acc_t out[MR][2]) {
    __m256i a0 = _mm256_setzero_si256(), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0;
#pragma GCC unroll 2
    for (int64_t k = 0; k < K4; k += 4) {
        const int8_t *w = p0 + k * PANEL;
        offset_row(xq + k, w, &a0, &b0), offset_row(xq + K4 + k, w, &a1, &b1);
        offset_row(xq + 2 * K4 + k, w, &a2, &b2), offset_row(xq + 3 * K4 + k, w, &a3, &b3);
    }
    out[0][0] = a0, out[0][1] = b0, out[1][0] = a1, out[1][1] = b1;
    out[2][0] = a2, out[2][1] = b2, out[3][0] = a3, out[3][1] = b3;
}
#endif

static void tile(const int8_t *xq, int64_t K4, const int8_t *p0, const int8_t *p1, acc_t acc[MR][2], int narrow) {
    (void)p1;
#if !VNNI
    if (narrow == NARROW_BOTH) {
        tile_narrow(xq, K4, p0, acc);
        return;
    }
    if (narrow == NARROW_WEIGHTS) {
        tile_offset(xq, K4, p0, acc);
        return;
    }
#else
    (void)narrow;
#endif
    tile_bytes(xq, K4, p0, acc);
}

/* 8 outputs of one row: (sum - zero * sum_k w) * (x_scale * w_scale) + bias, with colsum = 128 * sum_k w,
 * and the GELU where asked, or times silu(gate) where `gate` (the same place in the gate projection's
 * output: SwiGLU's product, one pass fewer over an LLM's (rows, intermediate) floats); `stream`:
 * stored past the caches (an output too big for them, which would otherwise be read in before it
 * is overwritten: 4-8% of a vision linear); the scalar loop only at the edge */
static inline void store8(float *dst, __m256i sum, const int32_t *colsum, const float *wscales, const float *bias,
                          float xs, int32_t zero, int64_t valid, int gelu, const float *gate, int stream) {
    if (valid >= 8) {
        if (zero) {
            const __m256i wsum = _mm256_srai_epi32(_mm256_loadu_si256((const __m256i *)colsum), 7);
            sum = _mm256_sub_epi32(sum, _mm256_mullo_epi32(wsum, _mm256_set1_epi32(zero)));
        }
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(_mm256_set1_ps(xs), _mm256_loadu_ps(wscales)));
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
        if (gelu) v = gelu8(v);
        if (gate) v = _mm256_mul_ps(v, silu8(_mm256_loadu_ps(gate)));
        if (stream)
            _mm256_stream_ps(dst, v);
        else
            _mm256_storeu_ps(dst, v);
        return;
    }
    int32_t sums[8];
    _mm256_storeu_si256((__m256i *)sums, sum);
    for (int64_t c = 0; c < valid; c++) {
        const float v = (float)(sums[c] - zero * (colsum[c] / 128)) * (xs * wscales[c]) + (bias ? bias[c] : 0.f);
        dst[c] = (gelu ? gelu1(v) : v) * (gate ? silu1(gate[c]) : 1.f);
    }
}
#endif
#define BLOCK_TILES (BLOCK_ROWS / MR)

/* how this build stores activation rows for what the weights allow; VNNI builds take every `narrow` as WIDE */
static inline int activation_mode(int *narrow) {
#if VNNI
    *narrow = WIDE;
    return OFFSET;
#else
    return *narrow == NARROW_BOTH ? NARROW : *narrow == NARROW_WEIGHTS ? OFFSET : SIGNED;
#endif
}
#define TILE_CHANNELS (STEP * PANEL) /* output channels of one micro-tile: 2 halves */

typedef struct {
    const int8_t *xq, *packed;
    const float *xs, *wscales, *bias;
    const int32_t *xzeros, *colsum;
    int64_t M, N, K4, panels;
    int64_t ldo; /* floats between output rows */
    int gelu;   /* 1: the tanh GELU on the outputs (an MLP's first linear) */
    const float *gate; /* or NULL: the outputs times silu(gate) (M rows of ldo floats; may be out itself) */
    int narrow; /* WIDE, NARROW_BOTH (rows in NARROW form) or NARROW_WEIGHTS */
    int stream; /* 1: outputs stored past the caches (store8) */
    float *out;
} igemm_args;

/* row tile rt (MR rows) x channel tile ct (STEP panels): the integer sums, then the scaled floats */
static void micro_tile(const igemm_args *g, int64_t rt, int64_t ct) {
    const int64_t p = ct * STEP, m0 = rt * MR, n0 = p * PANEL, K4 = g->K4, N = g->N;
    const int8_t *p0 = g->packed + p * K4 * PANEL;
    const int8_t *p1 = p + 1 < g->panels ? p0 + K4 * PANEL : p0; /* an odd last panel: summed twice, stored once */
    acc_t acc[MR][2];
    if (g->gate) /* its rows are a column walk (a miss each) read after the sums: fetched during them */
        for (int r = 0; r < MR && m0 + r < g->M; r++)
            for (int64_t n = n0; n < n0 + TILE_CHANNELS && n < N; n += 64 / sizeof(float))
                _mm_prefetch((const char *)(g->gate + (m0 + r) * g->ldo + n), _MM_HINT_T0);
    tile(g->xq + m0 * K4, K4, p0, p1, acc, g->narrow);
    for (int r = 0; r < MR && m0 + r < g->M; r++) {
        float *row = g->out + (m0 + r) * g->ldo;
        const float xs = g->xs[m0 + r];
        const float *gate = g->gate ? g->gate + (m0 + r) * g->ldo : NULL;
        for (int half = 0; half < 2; half++) {
            const int64_t n = n0 + half * (TILE_CHANNELS / 2);
            if (n >= N) break;
            const float *bias = g->bias ? g->bias + n : NULL;
#if STEP == 2
            store16(row + n, acc[r][half], g->colsum + n, g->wscales + n, bias, xs, N - n, g->gelu, gate ? gate + n : NULL);
#else
            store8(row + n, acc[r][half], g->colsum + n, g->wscales + n, bias, xs, g->xzeros[m0 + r], N - n, g->gelu,
                   gate ? gate + n : NULL, g->stream);
#endif
        }
    }
}

#endif
