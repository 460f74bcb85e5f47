/* int8-activation x int4/int8-weight matrix products for x86 CPUs (AVX2, AVX-VNNI, AVX-512 VNNI).
 *
 * Built on the user's machine at first use with -march=native (minicpmv/quant/native.py), so the
 * instruction set is the CPU's own; the pure-PyTorch path stays the reference.
 *
 * Why int8 activations: a dot product of bytes (vpdpbusd / vpmaddubsw) does 32 multiply-adds per
 * instruction, so decoding stays bound by memory (the weights are read once per token) and
 * prefill gets integer throughput instead of torch's bf16 emulation on CPUs without native bf16.
 *
 * Activations are quantized symmetrically (scale = absmax / 127) per block: one weight group
 * for int4 weights, 32 or 64 values for int8 weights (as llama.cpp's Q8_0); int4 scales and zeros
 * are float16, as stored.
 *
 * int4 weights keep the stored layout: byte j of a row holds column 2j in its low nibble and
 * 2j+1 in its high nibble, so the 16 bytes of a 32-column block unpack into [even columns, odd
 * columns]; the activation block is permuted the same way when quantized, which leaves the weights
 * untouched (no second copy).  A weight value is (q - 8) * s + z, so a group's dot product is
 * s * sx * (sum(q * xq) - 8 * sum(xq)) + z * sum(x): the integer part is exact and centred (the
 * activation rounding errors meet weights of mean 0, not of mean 7.5), the zero term uses the
 * float sum of x.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"
#include "vecmath.h"

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "qgemm needs AVX2, FMA and F16C"
#endif

#define BLOCK 32

/* sum over 4 adjacent u8 x s8 products into each int32 lane */
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    /* u <= 255 only for int8 weights' absolute values (<= 127) and nibbles (<= 15): no saturation */
    __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
#endif
}

/* Quantize rows of x (M, K) to int8 in blocks of `block` values (a multiple of 32): q (M, K),
 * scales (M, K/block), block sums of x and of the dequantized block, scale * sum(q) (M, K/block).
 * With `run` (32 or 64, 0 for none), each run of that many values is stored in the order int4
 * weights unpack into: [even columns of each 32, then odd columns of each 32]. */
static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* Eight values at a time (decoding quantizes one row per linear, on one thread): the rounding of
 * _mm256_cvtps_epi32 is lrintf's (nearest, ties to even), so the bytes are those of a scalar loop. */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t block, int run,
                          int8_t *q, float *scales, float *sums, float *qsums) {
    const int64_t nb = K / block;
    int position[64]; /* where value k of a run goes */
    for (int k = 0; k < run; k++) {
        const int part = k / BLOCK, j = k % BLOCK;
        position[k] = (j & 1) * (run / 2) + part * (BLOCK / 2) + (j >> 1);
    }
#pragma omp parallel for schedule(static) if (M > 1)
    for (int64_t r = 0; r < M; r++) {
        int8_t natural[block];
        for (int64_t b = 0; b < nb; b++) {
            const float *src = x + r * K + b * block;
            const __m256 sign = _mm256_set1_ps(-0.f);
            __m256 vmax = _mm256_setzero_ps(), vsum = _mm256_setzero_ps();
            for (int64_t i = 0; i < block; i += 8) {
                const __m256 v = _mm256_loadu_ps(src + i);
                vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
                vsum = _mm256_add_ps(vsum, v);
            }
            const float scale = hmax8(vmax) / 127.f;
            const __m256 inv = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
            int8_t *dst = q + r * K + b * block, *out = run ? natural : dst;
            __m256i vq = _mm256_setzero_si256();
            for (int64_t i = 0; i < block; i += 8) {
                const __m256i qi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(src + i), inv));
                vq = _mm256_add_epi32(vq, qi);
                const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
                _mm_storel_epi64((__m128i *)(out + i), _mm_packs_epi16(words, words)); /* |q| <= 127 */
            }
            for (int64_t base = 0; run && base < block; base += run)
                for (int k = 0; k < run; k++) dst[base + position[k]] = natural[base + k];
            qsums[r * nb + b] = scale * (float)isum8(vq);
            scales[r * nb + b] = scale;
            sums[r * nb + b] = sum8(vsum);
        }
    }
}

/* Tiles of MT activation rows x NT weight rows, accumulators kept in registers: each unpacked
 * weight block is used MT times and each activation block NT times. */
#define NT 4
#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* Weight rows are fetched this far ahead into L2 (not L1: the L2 keeps more misses in flight).
 * A tile's rows are short interleaved streams the hardware prefetcher does not follow; measured
 * on the Qwen2-1.5B head (233 MB, cold): int8 20 -> 32 GB/s, int4 15 -> 21 GB/s. */
#define AHEAD (4 * NT)

/* the float16 scales and zeros of the rows AHEAD of a tile (their lines, once per tile) */
static inline void prefetch_group_terms(const uint16_t *scales, const uint16_t *zeros, int64_t n0, int64_t ng) {
    const char *s = (const char *)(scales + (n0 + AHEAD) * ng), *z = (const char *)(zeros + (n0 + AHEAD) * ng);
    for (int64_t b = 0; b < NT * ng * 2; b += 64) {
        _mm_prefetch(s + b, _MM_HINT_T1);
        _mm_prefetch(z + b, _MM_HINT_T1);
    }
}

static inline __m256i unpack_nibbles(const uint8_t *src) {
    const __m128i low_mask = _mm_set1_epi8(0x0F);
    __m128i packed = _mm_loadu_si128((const __m128i *)src);
    __m128i lo = _mm_and_si128(packed, low_mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low_mask);
    return _mm256_set_m128i(hi, lo); /* [even columns, odd columns] */
}

typedef struct {
    const int8_t *xq; const float *xscales; const float *gsums; const float *qsums; /* activations: scales, sums per block */
    const float *xf;                                             /* float activations (bf16 weights) */
    const void *w; const void *wscales; const uint16_t *wzeros;  /* weights, scales (and int4 zeros) */
    int64_t M, N, K, group;
    float *out;
} gemm_args;

/* sum over groups of z * sum(x) - 8 * s * sx * sum(xq): the zero and centring terms of a row.
 * Eight groups per step: done once per output and group, a scalar loop here cost as much as a
 * third of a decoded token (Qwen2-1.5B: 20 M group terms per token). */
static inline float int4_offset(const gemm_args *a, int64_t r, int64_t n) {
    const int64_t ng = a->K / a->group;
    const uint16_t *scales = (const uint16_t *)a->wscales + n * ng, *zeros = a->wzeros + n * ng;
    const float *gsums = a->gsums + r * ng, *qsums = a->qsums + r * ng;
    const __m256 minus8 = _mm256_set1_ps(-8.f);
    __m256 acc = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) {
        const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zeros + g)));
        const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scales + g)));
        acc = _mm256_fmadd_ps(z, _mm256_loadu_ps(gsums + g), acc);
        acc = _mm256_fmadd_ps(_mm256_mul_ps(s, minus8), _mm256_loadu_ps(qsums + g), acc);
    }
    float total = sum8(acc);
    for (; g < ng; g++) total += _cvtsh_ss(zeros[g]) * gsums[g] - 8.f * _cvtsh_ss(scales[g]) * qsums[g];
    return total;
}

ALWAYS_INLINE void int4_tile(const gemm_args *a, const int MT, const int nt, int64_t r0, int64_t n0) {
    /* activations come in blocks of one weight group: integer sums over the whole group, then one
     * conversion and one multiply-add per group */
    const int64_t K = a->K, ng = K / a->group, per_group = a->group / BLOCK;
    const uint8_t *w = (const uint8_t *)a->w;
    const uint16_t *scales = (const uint16_t *)a->wscales;
    prefetch_group_terms(scales, a->wzeros, n0, ng);
    __m256 acc[4][NT];
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m256i dot[4][NT];
        for (int t = 0; t < MT; t++)
            for (int c = 0; c < nt; c++) dot[t][c] = _mm256_setzero_si256();
        for (int64_t j = 0; j < per_group; j++) {
            const int64_t b = g * per_group + j;
            __m256i wq[NT];
            for (int c = 0; c < nt; c++) {
                const uint8_t *src = w + (n0 + c) * (K / 2) + b * (BLOCK / 2);
                _mm_prefetch((const char *)(src + AHEAD * (K / 2)), _MM_HINT_T1); /* see AHEAD */
                wq[c] = unpack_nibbles(src);
            }
            for (int t = 0; t < MT; t++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->xq + (r0 + t) * K + b * BLOCK));
                for (int c = 0; c < nt; c++) dot[t][c] = dot_u8s8(dot[t][c], wq[c], xv);
            }
        }
        for (int c = 0; c < nt; c++) {
            const float s = _cvtsh_ss(scales[(n0 + c) * ng + g]);
            for (int t = 0; t < MT; t++) {
                const __m256 scale = _mm256_set1_ps(s * a->xscales[(r0 + t) * ng + g]);
                acc[t][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t][c]), scale, acc[t][c]);
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) a->out[(r0 + t) * a->N + n0 + c] = sum8(acc[t][c]) + int4_offset(a, r0 + t, n0 + c);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* 64 columns per instruction: the 32 bytes of two blocks unpack into one 512-bit register as
 * [even columns of both blocks, odd columns of both blocks] (activations quantized with run 64).
 * Half the instructions per byte of the 256-bit tile, which is what decoding is bound by. */
#define INT4_RUN_512 64
static inline __m512i unpack_nibbles_512(const uint8_t *src) {
    const __m512i both = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)src));
    const __m512i shifts = _mm512_set_epi64(4, 4, 4, 4, 0, 0, 0, 0);
    return _mm512_and_si512(_mm512_srlv_epi64(both, shifts), _mm512_set1_epi8(0x0F));
}

ALWAYS_INLINE void int4_tile512(const gemm_args *a, const int MT, const int nt, int64_t r0, int64_t n0) {
    const int64_t K = a->K, ng = K / a->group, per_group = a->group / 64;
    const uint8_t *w = (const uint8_t *)a->w;
    const uint16_t *scales = (const uint16_t *)a->wscales;
    prefetch_group_terms(scales, a->wzeros, n0, ng);
    __m512 acc[4][NT];
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m512i dot[4][NT];
        for (int t = 0; t < MT; t++)
            for (int c = 0; c < nt; c++) dot[t][c] = _mm512_setzero_si512();
        for (int64_t j = 0; j < per_group; j++) {
            const int64_t col = (g * per_group + j) * 64;
            __m512i wq[NT];
            for (int c = 0; c < nt; c++) {
                const uint8_t *src = w + (n0 + c) * (K / 2) + col / 2;
                _mm_prefetch((const char *)(src + AHEAD * (K / 2)), _MM_HINT_T1); /* see AHEAD */
                wq[c] = unpack_nibbles_512(src);
            }
            for (int t = 0; t < MT; t++) {
                const __m512i xv = _mm512_loadu_si512((const void *)(a->xq + (r0 + t) * K + col));
                for (int c = 0; c < nt; c++) dot[t][c] = _mm512_dpbusd_epi32(dot[t][c], wq[c], xv);
            }
        }
        for (int c = 0; c < nt; c++) {
            const float s = _cvtsh_ss(scales[(n0 + c) * ng + g]);
            for (int t = 0; t < MT; t++) {
                const __m512 scale = _mm512_set1_ps(s * a->xscales[(r0 + t) * ng + g]);
                acc[t][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][c]), scale, acc[t][c]);
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++)
            a->out[(r0 + t) * a->N + n0 + c] = _mm512_reduce_add_ps(acc[t][c]) + int4_offset(a, r0 + t, n0 + c);
}
#else
#define INT4_RUN_512 0
#endif

ALWAYS_INLINE void int8_tile(const gemm_args *a, const int MT, const int nt, int64_t r0, int64_t n0) {
    const int64_t K = a->K, nb = K / BLOCK;
    const int8_t *w = (const int8_t *)a->w;
    const float *wscales = (const float *)a->wscales;
    __m256 acc[4][NT];
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv[NT], wabs[NT];
        for (int c = 0; c < nt; c++) {
            _mm_prefetch((const char *)(w + (n0 + c + AHEAD) * K + b * BLOCK), _MM_HINT_T1); /* see AHEAD */
            wv[c] = _mm256_loadu_si256((const __m256i *)(w + (n0 + c) * K + b * BLOCK));
            wabs[c] = _mm256_sign_epi8(wv[c], wv[c]); /* u8 operand |w| <= 127, sign moved onto x */
        }
        for (int t = 0; t < MT; t++) {
            const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->xq + (r0 + t) * K + b * BLOCK));
            const __m256 xs = _mm256_set1_ps(a->xscales[(r0 + t) * nb + b]);
            for (int c = 0; c < nt; c++) {
                __m256i d = dot_u8s8(_mm256_setzero_si256(), wabs[c], _mm256_sign_epi8(xv, wv[c]));
                acc[t][c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), xs, acc[t][c]);
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) a->out[(r0 + t) * a->N + n0 + c] = sum8(acc[t][c]) * wscales[n0 + c];
}

#if INT4_RUN_512
/* int8 weights, 64 columns per instruction with activations quantized in blocks of 64.  No 512-bit
 * vpsignb: the sign of w moves onto x with a masked negation, |w| is the unsigned operand. */
ALWAYS_INLINE void int8_tile512(const gemm_args *a, const int MT, const int nt, int64_t r0, int64_t n0) {
    const int64_t K = a->K, nb = K / 64;
    const int8_t *w = (const int8_t *)a->w;
    const float *wscales = (const float *)a->wscales;
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc[4][NT];
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i wabs[NT];
        __mmask64 negative[NT];
        for (int c = 0; c < nt; c++) {
            const int8_t *src = w + (n0 + c) * K + b * 64;
            _mm_prefetch((const char *)(src + AHEAD * K), _MM_HINT_T1); /* see AHEAD */
            const __m512i wv = _mm512_loadu_si512((const void *)src);
            wabs[c] = _mm512_abs_epi8(wv);
            negative[c] = _mm512_movepi8_mask(wv);
        }
        for (int t = 0; t < MT; t++) {
            const __m512i xv = _mm512_loadu_si512((const void *)(a->xq + (r0 + t) * K + b * 64));
            const __m512 xs = _mm512_set1_ps(a->xscales[(r0 + t) * nb + b]);
            for (int c = 0; c < nt; c++) {
                const __m512i signed_x = _mm512_mask_sub_epi8(xv, negative[c], zero, xv);
                const __m512i d = _mm512_dpbusd_epi32(zero, wabs[c], signed_x);
                acc[t][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), xs, acc[t][c]);
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) a->out[(r0 + t) * a->N + n0 + c] = _mm512_reduce_add_ps(acc[t][c]) * wscales[n0 + c];
}
#endif

/* bfloat16 weights widened in registers, float32 x and accumulation: the float32 result of a
 * bfloat16 checkpoint at half the bytes per token (K a multiple of 8). */
static inline __m256 bf16_to_f32(const uint16_t *src) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

ALWAYS_INLINE void bf16_tile(const gemm_args *a, const int MT, const int nt, int64_t r0, int64_t n0) {
    const int64_t K = a->K;
    const uint16_t *w = (const uint16_t *)a->w;
    __m256 acc[4][NT];
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) acc[t][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k += 8) {
        __m256 wv[NT];
        for (int c = 0; c < nt; c++) wv[c] = bf16_to_f32(w + (n0 + c) * K + k);
        for (int t = 0; t < MT; t++) {
            const __m256 xv = _mm256_loadu_ps(a->xf + (r0 + t) * K + k);
            for (int c = 0; c < nt; c++) acc[t][c] = _mm256_fmadd_ps(wv[c], xv, acc[t][c]);
        }
    }
    for (int t = 0; t < MT; t++)
        for (int c = 0; c < nt; c++) a->out[(r0 + t) * a->N + n0 + c] = sum8(acc[t][c]);
}

/* Dispatch with compile-time tile sizes so the loops above unroll into registers. */
#define DISPATCH(tile, a, rows, nt, r0, n0)                   \
    do {                                                      \
        if ((nt) == NT) {                                     \
            switch (rows) {                                   \
            case 4: tile(a, 4, NT, r0, n0); break;            \
            case 3: tile(a, 3, NT, r0, n0); break;            \
            case 2: tile(a, 2, NT, r0, n0); break;            \
            default: tile(a, 1, NT, r0, n0); break;           \
            }                                                 \
        } else {                                              \
            for (int c_ = 0; c_ < (nt); c_++)                 \
                for (int t_ = 0; t_ < (rows); t_++) tile(a, 1, 1, (r0) + t_, (n0) + c_); \
        }                                                     \
    } while (0)

static void run_gemm(const gemm_args *a, enum linear_kind kind) { /* INT4, INT8 or BF16 */
    const int64_t tiles_n = (a->N + NT - 1) / NT;
    /* weight tiles outermost: each is read from memory once and reused for all activation rows */
#pragma omp parallel for schedule(static)
    for (int64_t tn = 0; tn < tiles_n; tn++) {
        const int64_t n0 = tn * NT;
        const int nt = (int)(a->N - n0 < NT ? a->N - n0 : NT);
        for (int64_t r0 = 0; r0 < a->M; r0 += 4) {
            const int rows = (int)(a->M - r0 < 4 ? a->M - r0 : 4);
            if (kind == BF16) DISPATCH(bf16_tile, a, rows, nt, r0, n0);
#if INT4_RUN_512
            else if (kind == INT4 && a->group % 64 == 0) DISPATCH(int4_tile512, a, rows, nt, r0, n0);
            else if (kind == INT8 && a->group == 64) DISPATCH(int8_tile512, a, rows, nt, r0, n0);
#endif
            else if (kind == INT4) DISPATCH(int4_tile, a, rows, nt, r0, n0);
            else DISPATCH(int8_tile, a, rows, nt, r0, n0);
        }
    }
}

/* How activations for int4 weights of this group size must be laid out (the `run` of quantize_rows). */
static int int4_run(int64_t group) {
    return (INT4_RUN_512 && group % 64 == 0) ? 64 : 32;
}

int minicpmv_quantize_activations(act_buffers *b, const float *x, int64_t M, int64_t K, int64_t block, int run) {
    const int64_t blocks = M * (K / block);
    b->q = malloc((size_t)(M * K));
    b->scales = malloc((size_t)blocks * 3 * sizeof(float));
    if (!b->q || !b->scales) {
        minicpmv_free_activations(b);
        return -1;
    }
    b->sums = b->scales + blocks, b->qsums = b->sums + blocks;
    quantize_rows(x, M, K, block, run, b->q, b->scales, b->sums, b->qsums);
    return 0;
}

void minicpmv_free_activations(act_buffers *b) { free(b->q), free(b->scales); }

/* The entry points.  x float32 (M, K) in, out float32 (M, N) = x @ W^T: activation quantization
 * and product in one call, so that a decoded token costs one foreign call per linear.  Return 0,
 * or -1 if out of memory. */
/* int4 W (N, K/2) with float16 scales and zeros (N, K/g) each; activations in blocks of one group */
int minicpmv_linear_int4(const float *x, int64_t M, const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N,
                         int64_t K, int64_t group, float *out) {
    act_buffers b;
    if (minicpmv_quantize_activations(&b, x, M, K, group, int4_run(group))) return -1;
    gemm_args a = {b.q, b.scales, b.sums, b.qsums, NULL, w, scales, zeros, M, N, K, group, out};
    run_gemm(&a, INT4);
    minicpmv_free_activations(&b);
    return 0;
}

/* int8 W (N, K) with one float32 scale per output row */
int minicpmv_linear_int8(const float *x, int64_t M, const int8_t *w, const float *wscales, int64_t N,
                         int64_t K, float *out) {
    act_buffers b;
    /* the 512-bit tile takes activation blocks of 64 (group field of gemm_args), the other 32 */
    const int64_t block = (INT4_RUN_512 && K % 64 == 0) ? 64 : BLOCK;
    if (minicpmv_quantize_activations(&b, x, M, K, block, 0)) return -1;
    gemm_args a = {b.q, b.scales, NULL, NULL, NULL, w, wscales, NULL, M, N, K, block, out};
    run_gemm(&a, INT8);
    minicpmv_free_activations(&b);
    return 0;
}

/* bfloat16 W (N, K), no quantization of x */
int minicpmv_linear_bf16(const float *x, int64_t M, const uint16_t *w, int64_t N, int64_t K, float *out) {
    gemm_args a = {NULL, NULL, NULL, NULL, x, w, NULL, NULL, M, N, K, 0, out};
    run_gemm(&a, BF16);
    return 0;
}

/* Weights widened to bfloat16 (rounded to nearest even) for prefill, where one oneDNN bf16 GEMM
 * on the whole weight beats per-group integer products on CPUs with native bf16: out (N, K).
 * Auto-vectorised; one pass over the weight. */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

void minicpmv_widen_int4(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N, int64_t K,
                         int64_t group, uint16_t *out) {
    const int64_t ng = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < ng; g++) {
            const float s = _cvtsh_ss(scales[n * ng + g]);
            const float base = _cvtsh_ss(zeros[n * ng + g]) - 8.f * s;
            const uint8_t *src = w + n * (K / 2) + g * (group / 2);
            uint16_t *dst = out + n * K + g * group;
            for (int64_t j = 0; j < group / 2; j++) {
                dst[2 * j] = to_bf16((float)(src[j] & 15) * s + base);
                dst[2 * j + 1] = to_bf16((float)(src[j] >> 4) * s + base);
            }
        }
    }
}

void minicpmv_widen_int8(const int8_t *w, const float *scales, int64_t N, int64_t K, uint16_t *out) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[n * K + k] = to_bf16((float)w[n * K + k] * scales[n]);
}
