/* int8 x int8 matrix products for many activation rows (the vision tower: 1024 patches per crop),
 * where the time goes to arithmetic, not to reading weights: a byte dot product does 4 multiply-
 * adds per 32-bit lane, twice the rate of bfloat16's and four times float32's.
 *
 * out (M, N) = (x_scale[m] * w_scale[n]) * sum_k xq[m, k] * wq[n, k] + bias[n], with activations
 * quantized per row (symmetric, absmax / 127) and weights per output channel (symmetric), both
 * chosen by the caller; the integer sums are exact.
 *
 * Weights are packed once, at load, into panels of 16 output channels x 4 consecutive k (64 bytes,
 * one 512-bit register; two 256-bit halves of 8 channels on AVX2), so the inner loop reads them in
 * order and broadcasts 4 activation bytes against them.
 * VNNI (AVX-512, or AVX-VNNI's 256 bits): vpdpbusd takes unsigned bytes on one side, so activations
 * are offset by +128 and 128 * sum_k wq[n, k] is taken back per channel. AVX2: vpmaddubsw, 2 pair
 * products into 16 bits, then vpmaddwd and an add into 32; either |w| as the unsigned side with
 * the sign of w moved onto x (exact for 8-bit x: 4 instructions per 32 products), or, where the
 * caller asks `narrow` (weights in [-63, 63]), x in 7 unsigned bits with a zero point per row:
 * 2.5 instructions per 32 products, 1.8x.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vecmath.h"

#define PANEL 16 /* output channels per packed panel */

/* w (N, K) int8 -> packed (ceil(N/16), K4/4, 16, 4) with K4 = K rounded up to 4, zero padded;
 * colsum (N) = 128 * sum_k w[n, k] (the VNNI offset correction). */
void minicpmv_pack_int8(const int8_t *w, int64_t N, int64_t K, int8_t *packed, int32_t *colsum) {
    const int64_t K4 = (K + 3) / 4 * 4, panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        int8_t *dst = packed + p * K4 * PANEL;
        for (int64_t k4 = 0; k4 < K4; k4 += 4)
            for (int64_t c = 0; c < PANEL; c++)
                for (int64_t j = 0; j < 4; j++) {
                    const int64_t n = p * PANEL + c, k = k4 + j;
                    *dst++ = (n < N && k < K) ? w[n * K + k] : 0;
                }
        for (int64_t c = 0; c < PANEL && p * PANEL + c < N; c++) {
            int32_t total = 0;
            for (int64_t k = 0; k < K; k++) total += w[(p * PANEL + c) * K + k];
            colsum[p * PANEL + c] = 128 * total;
        }
    }
}

/* The same from int8 decoding tiles (kernels/tiles.c: the panels' layout, each byte w + 128;
 * N % 16 == 0, K % 4 == 0). */
void minicpmv_pack_int8_tiles(const uint8_t *tiles, int64_t N, int64_t K, int8_t *packed, int32_t *colsum) {
    const int64_t chunk = PANEL * 4;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / PANEL; p++) {
        int32_t totals[PANEL] = {0};
        for (int64_t c = p * K / 4; c < (p + 1) * K / 4; c++) {
            const uint8_t *src = tiles + c * chunk;
            int8_t *dst = packed + c * chunk;
            for (int64_t i = 0; i < chunk; i++) dst[i] = (int8_t)(src[i] ^ 0x80);
            for (int64_t r = 0; r < PANEL; r++) totals[r] += dst[4 * r] + dst[4 * r + 1] + dst[4 * r + 2] + dst[4 * r + 3];
        }
        for (int64_t r = 0; r < PANEL; r++) colsum[p * PANEL + r] = 128 * totals[r];
    }
}

/* int4 weights (N, K/2 bytes, low nibble first; float16 scales and zeros per group, w = q * s +
 * zero - 8 s) -> the layout of minicpmv_pack_int8 with per-channel scales, so that a prefill (many
 * rows) runs in minicpmv_igemm: built per call, it costs a pass over the weight, not a copy kept.
 * |w| of a channel peaks at q = 0 or q = 15 of some group, so its scale comes from the group
 * parameters alone; each group's 16 values are rounded once into a table. The requantized weight
 * is within half a step (absmax / 254) of the int4 one, a fraction of the int4 step. K % 4 == 0. */
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

/* The per-channel int8 scale of an int4 row whose group parameters are `stride` apart. */
static float int4_channel_scale(const uint16_t *scales, const uint16_t *zeros, int64_t stride, int64_t ng) {
    float amax = 0.f;
    for (int64_t g = 0; g < ng; g++) {
        const float s = half_to_float(scales[g * stride]), base = half_to_float(zeros[g * stride]) - 8.f * s;
        const float ends = fmaxf(fabsf(base), fabsf(15.f * s + base));
        amax = ends > amax ? ends : amax;
    }
    return amax / 127.f;
}

/* a group's 16 int4 values requantized with 1 / the channel scale */
static void int4_group_table(uint16_t scale, uint16_t zero, float inv, int8_t table[16]) {
    const float s = half_to_float(scale), base = half_to_float(zero) - 8.f * s;
    for (int q = 0; q < 16; q++) table[q] = (int8_t)_mm_cvtss_si32(_mm_set_ss(((float)q * s + base) * inv));
}

void minicpmv_pack_int4_as_int8(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N,
                                int64_t K, int64_t group, int8_t *packed, int32_t *colsum, float *wscales) {
    const int64_t panels = (N + PANEL - 1) / PANEL, ng = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        int8_t *dst = packed + p * K * PANEL;
        for (int64_t c = 0; c < PANEL; c++) {
            const int64_t n = p * PANEL + c;
            if (n >= N) { /* the padding channels of the last panel */
                for (int64_t k = 0; k < K; k++) dst[(k / 4) * PANEL * 4 + c * 4 + k % 4] = 0;
                continue;
            }
            const float scale = int4_channel_scale(scales + n * ng, zeros + n * ng, 1, ng);
            const float inv = scale > 0.f ? 1.f / scale : 0.f;
            int32_t total = 0;
            for (int64_t g = 0; g < ng; g++) {
                int8_t table[16];
                int4_group_table(scales[n * ng + g], zeros[n * ng + g], inv, table);
                const uint8_t *src = w + n * (K / 2) + g * (group / 2);
                for (int64_t j = 0; j < group / 2; j++) {
                    const int64_t k = g * group + 2 * j; /* even: k and k + 1 share a 4-wide slot */
                    int8_t *slot = dst + (k / 4) * PANEL * 4 + c * 4 + k % 4;
                    slot[0] = table[src[j] & 15], slot[1] = table[src[j] >> 4];
                    total += slot[0] + slot[1];
                }
            }
            colsum[n] = 128 * total;
            wscales[n] = scale;
        }
    }
}

/* The same from int4 decoding tiles (kernels/tiles.c, N % 16 == 0): a tile is a panel; the
 * low nibbles of its 64-byte chunk c are the panel's slot 2c and the high nibbles slot 2c + 1. */
void minicpmv_pack_int4_tiles_as_int8(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N,
                                      int64_t K, int64_t group, int8_t *packed, int32_t *colsum, float *wscales) {
    const int64_t ng = K / group, chunks = group / 8, chunk = PANEL * 4;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / PANEL; p++) {
        const uint8_t *tile = w + p * PANEL * (K / 2);
        const uint16_t *sc = scales + p * PANEL * ng, *zr = zeros + p * PANEL * ng; /* (ng, 16) */
        int8_t *dst = packed + p * PANEL * K;
        for (int64_t r = 0; r < PANEL; r++) {
            const float scale = int4_channel_scale(sc + r, zr + r, PANEL, ng);
            const float inv = scale > 0.f ? 1.f / scale : 0.f;
            int32_t total = 0;
            for (int64_t g = 0; g < ng; g++) {
                int8_t table[16];
                int4_group_table(sc[g * PANEL + r], zr[g * PANEL + r], inv, table);
                for (int64_t c = g * chunks; c < (g + 1) * chunks; c++)
                    for (int64_t j = 0; j < 4; j++) {
                        const uint8_t byte = tile[c * chunk + 4 * r + j];
                        int8_t *lo = dst + 2 * c * chunk + 4 * r + j, *hi = lo + chunk;
                        *lo = table[byte & 15], *hi = table[byte >> 4];
                        total += *lo + *hi;
                    }
            }
            colsum[p * PANEL + r] = 128 * total;
            wscales[p * PANEL + r] = scale;
        }
    }
}

/* How a row of activations is stored: SIGNED, round(x / s) in [-127, 127] with s = absmax / 127;
 * OFFSET, the same + 128 (vpdpbusd's unsigned side); NARROW, 7 bits from the row's own range,
 * round(x / s) + z in [0, 127] with s = (max - min) / 127 and z the row's zero point (min and max
 * taken with 0, so that z is in [0, 127]): unsigned as vpmaddubsw wants it, no sign step. */
enum { SIGNED, OFFSET, NARROW };

/* x (M, K) float32 -> xq (M, K4) bytes (zero padded), a scale and a zero point per row */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t K4, int8_t *xq, float *scales,
                          int32_t *zeros, const int mode) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float *src = x + m * K;
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
        int8_t *dst = xq + m * K4;
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
        scales[m] = scale, zeros[m] = zero;
    }
}

/* tanh-approximated GELU in place: 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)),
 * u = sqrt(2 / pi) (x + 0.044715 x^3); applied to an output tile while it is in cache */
static void gelu_tanh(float *v, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(v + i);
        const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(x, x), x), _mm256_set1_ps(0.044715f), x);
        const __m256 e = exp8(_mm256_mul_ps(inner, _mm256_set1_ps(-2.f * 0.7978845608f)));
        _mm256_storeu_ps(v + i, _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), e)));
    }
    for (; i < n; i++) {
        const float x = v[i];
        v[i] = x / (1.f + expf(-2.f * 0.7978845608f * (x + 0.044715f * x * x * x)));
    }
}

/* Rows whose quantized activations stay in L2 while every channel panel passes them */
#define BLOCK_ROWS 96

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

/* 16 outputs of one row: (sum - 128 * colsum) * x_scale * w_scale + bias, masked at the edge */
static inline void store16(float *dst, __m512i sum, const int32_t *colsum, const float *wscales, const float *bias,
                           float xs, int64_t valid) {
    const __mmask16 keep = valid >= 16 ? 0xFFFF : (__mmask16)((1u << valid) - 1);
    const __m512i exact = _mm512_sub_epi32(sum, _mm512_maskz_loadu_epi32(keep, colsum));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(_mm512_set1_ps(xs), _mm512_maskz_loadu_ps(keep, wscales)));
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(keep, bias));
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
 * 5 instructions per 64 products instead of 8 (SIGNED) */
static inline __m256i pair_step(__m256i acc, __m256i a, __m256i w, __m256i b, __m256i v) {
    const __m256i sums = _mm256_add_epi16(_mm256_maddubs_epi16(a, w), _mm256_maddubs_epi16(b, v));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(sums, _mm256_set1_epi16(1)));
}

static void tile_narrow(const int8_t *xq, int64_t K4, const int8_t *p0, acc_t out[MR][2]) {
    acc_t acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    int64_t k = 0;
    for (; k + 8 <= K4; k += 8) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL + 32));
        const __m256i v0 = _mm256_loadu_si256((const __m256i *)(p0 + (k + 4) * PANEL));
        const __m256i v1 = _mm256_loadu_si256((const __m256i *)(p0 + (k + 4) * PANEL + 32));
        for (int r = 0; r < MR; r++) {
            int32_t four, next;
            memcpy(&four, xq + r * K4 + k, 4), memcpy(&next, xq + r * K4 + k + 4, 4);
            const __m256i a = _mm256_set1_epi32(four), b = _mm256_set1_epi32(next);
            acc[r][0] = pair_step(acc[r][0], a, w0, b, v0);
            acc[r][1] = pair_step(acc[r][1], a, w1, b, v1);
        }
    }
    if (k < K4) { /* an odd last 4-step, paired with nothing */
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(p0 + k * PANEL + 32));
        const __m256i none = _mm256_setzero_si256();
        for (int r = 0; r < MR; r++) {
            int32_t four;
            memcpy(&four, xq + r * K4 + k, 4);
            const __m256i a = _mm256_set1_epi32(four);
            acc[r][0] = pair_step(acc[r][0], a, w0, none, none);
            acc[r][1] = pair_step(acc[r][1], a, w1, none, none);
        }
    }
    memcpy(out, acc, sizeof(acc));
}
#endif

static void tile(const int8_t *xq, int64_t K4, const int8_t *p0, const int8_t *p1, acc_t acc[MR][2], int narrow) {
    (void)p1;
#if !VNNI
    if (narrow) {
        tile_narrow(xq, K4, p0, acc);
        return;
    }
#endif
    tile_bytes(xq, K4, p0, acc);
}

/* 8 outputs of one row: (sum - zero * sum_k w) * (x_scale * w_scale) + bias, with colsum = 128 * sum_k w;
 * the scalar loop only at the edge */
static inline void store8(float *dst, __m256i sum, const int32_t *colsum, const float *wscales, const float *bias,
                          float xs, int32_t zero, int64_t valid) {
    if (valid >= 8) {
        if (zero) {
            const __m256i wsum = _mm256_srai_epi32(_mm256_loadu_si256((const __m256i *)colsum), 7);
            sum = _mm256_sub_epi32(sum, _mm256_mullo_epi32(wsum, _mm256_set1_epi32(zero)));
        }
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_mul_ps(_mm256_set1_ps(xs), _mm256_loadu_ps(wscales)));
        if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
        _mm256_storeu_ps(dst, v);
        return;
    }
    int32_t sums[8];
    _mm256_storeu_si256((__m256i *)sums, sum);
    for (int64_t c = 0; c < valid; c++)
        dst[c] = (float)(sums[c] - zero * (colsum[c] / 128)) * (xs * wscales[c]) + (bias ? bias[c] : 0.f);
}
#endif
#define BLOCK_TILES (BLOCK_ROWS / MR)
#define TILE_CHANNELS (STEP * PANEL) /* output channels of one micro-tile: 2 halves */

typedef struct {
    const int8_t *xq, *packed;
    const float *xs, *wscales, *bias;
    const int32_t *xzeros, *colsum;
    int64_t M, N, K4, panels;
    int gelu;   /* 1: the tanh GELU on the outputs (an MLP's first linear) */
    int narrow; /* 1: the activations in NARROW form */
    float *out;
} igemm_args;

/* row tile rt (MR rows) x channel tile ct (STEP panels): the integer sums, then the scaled floats */
static void micro_tile(const igemm_args *g, int64_t rt, int64_t ct) {
    const int64_t p = ct * STEP, m0 = rt * MR, n0 = p * PANEL, K4 = g->K4, N = g->N;
    const int8_t *p0 = g->packed + p * K4 * PANEL;
    const int8_t *p1 = p + 1 < g->panels ? p0 + K4 * PANEL : p0; /* an odd last panel: summed twice, stored once */
    acc_t acc[MR][2];
    tile(g->xq + m0 * K4, K4, p0, p1, acc, g->narrow);
    for (int r = 0; r < MR && m0 + r < g->M; r++) {
        float *row = g->out + (m0 + r) * N;
        const float xs = g->xs[m0 + r];
        for (int half = 0; half < 2; half++) {
            const int64_t n = n0 + half * (TILE_CHANNELS / 2);
            if (n >= N) break;
            const float *bias = g->bias ? g->bias + n : NULL;
#if STEP == 2
            store16(row + n, acc[r][half], g->colsum + n, g->wscales + n, bias, xs, N - n);
#else
            store8(row + n, acc[r][half], g->colsum + n, g->wscales + n, bias, xs, g->xzeros[m0 + r], N - n);
#endif
        }
        if (g->gelu) gelu_tanh(row + n0, TILE_CHANNELS < N - n0 ? TILE_CHANNELS : N - n0);
    }
}

/* the instruction set the integer products of this build use (`narrow` takes effect on "AVX2") */
const char *minicpmv_kernel_isa(void) {
#if STEP == 2
    return "AVX-512 VNNI";
#elif VNNI
    return "AVX-VNNI";
#else
    return "AVX2";
#endif
}

/* x (M, K) float32 -> out (M, N) float32 through packed int8 weights with per-channel scales;
 * bias (N) or NULL; gelu 1 applies the tanh GELU to the outputs; narrow 1: the weights are in
 * [-63, 63] and the activations may take 7 bits where that is faster (AVX2 without VNNI: about
 * 1.8x; VNNI builds keep 8 bits).
 * Returns 0, or -1 without memory for the quantized activations. */
int minicpmv_igemm(const float *x, int64_t M, int64_t K, const int8_t *packed, const float *wscales,
                   const int32_t *colsum, const float *bias, int64_t N, int gelu, int narrow, float *out) {
    const int64_t K4 = (K + 3) / 4 * 4, panels = (N + PANEL - 1) / PANEL;
    const int64_t row_tiles = (M + MR - 1) / MR, col_tiles = (panels + STEP - 1) / STEP;
    int8_t *xq = calloc((size_t)(row_tiles * MR * K4), 1); /* padding rows stay zero */
    float *xs = malloc((size_t)M * sizeof(float));
    int32_t *xzeros = malloc((size_t)M * sizeof(int32_t));
    if (!xq || !xs || !xzeros) {
        free(xq), free(xs), free(xzeros);
        return -1;
    }
#if VNNI
    narrow = 0;
    const int mode = OFFSET;
#else
    const int mode = narrow ? NARROW : SIGNED;
#endif
    quantize_rows(x, M, K, K4, xq, xs, xzeros, mode);
    const igemm_args g = {xq, packed, xs, wscales, bias, xzeros, colsum, M, N, K4, panels, gelu, narrow, out};
    /* blocks of BLOCK_TILES row tiles outermost (their quantized rows, 96 x K bytes, stay in L2
     * while every channel panel passes), channel panels within, row tiles innermost (the panel
     * stays in L1/L2 for them): the activations of many crops (10 x 1024 rows) are then read from
     * memory once, not once per panel */
    const int64_t blocks = (row_tiles + BLOCK_TILES - 1) / BLOCK_TILES;
#pragma omp parallel for schedule(static) collapse(2)
    for (int64_t rb = 0; rb < blocks; rb++)
        for (int64_t ct = 0; ct < col_tiles; ct++)
            for (int64_t rt = rb * BLOCK_TILES; rt < row_tiles && rt < (rb + 1) * BLOCK_TILES; rt++)
                micro_tile(&g, rt, ct);
    free(xq), free(xs), free(xzeros);
    return 0;
}
