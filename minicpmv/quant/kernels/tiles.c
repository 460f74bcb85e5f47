/* int4 and int8 weights in tiles of 16 output rows, for decoding: the layout llama.cpp's repacked Q4_0
 * taught (one sequential stream per thread, an output row per vector lane), built in place, in
 * memory only, when a layer first decodes; the stored layout comes back for anything else.
 *
 * Why: in the stored layout (row-major) a vector holds the columns of one row, so every group of
 * every row ends in a float conversion, a scale multiply and, per row, a horizontal sum: about
 * ten instructions per 32 bytes of weight. With rows in lanes, one conversion and two
 * multiply-adds finish a group for 16 rows and the result is stored as a vector.
 *
 * Layout of tile p (rows 16p .. 16p+15), K/8 chunks of 64 bytes: byte 4r + j of chunk c holds
 * column 8c + j of row 16p + r in its low nibble and column 8c + 4 + j in its high nibble, so
 * the low nibbles of a chunk are 16 lanes of 4 columns each against one broadcast of 4
 * activation bytes (vpdpbusd), and the high nibbles the next 4. AVX2 takes the two 32-byte
 * halves as rows 0-7 and 8-15. Scales and zeros of a tile: (K/g, 16) float16, group-major.
 * int8 tiles: below, with their own layout note.
 * N % 16 == 0 (the caller keeps other layers in the stored layout).
 *
 * A weight is (q - 8) * s + z, so a group adds s * (sx * sum(q * xq) - 8 * sx * sum(xq)) +
 * z * sum(x), with the activation terms of minicpmv_quantize_activations (natural column order).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"
#include "vecmath.h"

#define ROWS 16  /* output rows per tile */
#define CHUNK 64 /* bytes per chunk: 16 rows x 8 columns */
#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* how far ahead of the chunk being read the stream is fetched (bytes) */
#define AHEAD_BYTES 1024

/* every (tile, group of up to 4 activation rows) of a product, the tiles shared out among threads */
#define FOR_TILES(tile, args, M, N)                                     \
    _Pragma("omp parallel for schedule(static)")                        \
    for (int64_t p_ = 0; p_ < (N) / ROWS; p_++)                         \
        for (int64_t r0_ = 0; r0_ < (M); r0_ += 4) {                    \
            switch ((M) - r0_ < 4 ? (M) - r0_ : 4) {                    \
            case 4: tile(args, 4, r0_, p_); break;                      \
            case 3: tile(args, 3, r0_, p_); break;                      \
            case 2: tile(args, 2, r0_, p_); break;                      \
            default: tile(args, 1, r0_, p_); break;                     \
            }                                                           \
        }

static inline uint8_t nibble(const uint8_t *row, int64_t k) { return (row[k / 2] >> (4 * (k & 1))) & 15; }

/* to_tiles 1: stored -> tiles, 0: tiles -> stored; w (N, K/2), scales and zeros (N, K/g), in place */
void minicpmv_int4_tiles(uint8_t *w, uint16_t *scales, uint16_t *zeros, int64_t N, int64_t K, int64_t group,
                         int to_tiles) {
    const int64_t ng = K / group, bytes = ROWS * K / 2;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / ROWS; p++) {
        uint8_t *tile = w + p * bytes, *copy = malloc((size_t)bytes);
        uint16_t *terms = malloc((size_t)(2 * ROWS * ng) * sizeof(uint16_t));
        uint16_t *sc = scales + p * ROWS * ng, *zr = zeros + p * ROWS * ng;
        if (!copy || !terms) abort(); /* a few KB */
        memcpy(copy, tile, (size_t)bytes);
        memcpy(terms, sc, (size_t)(ROWS * ng) * sizeof(uint16_t));
        memcpy(terms + ROWS * ng, zr, (size_t)(ROWS * ng) * sizeof(uint16_t));
        for (int64_t r = 0; r < ROWS; r++) {
            for (int64_t g = 0; g < ng; g++) {
                const int64_t stored = r * ng + g, tiled = g * ROWS + r;
                sc[to_tiles ? tiled : stored] = terms[to_tiles ? stored : tiled];
                zr[to_tiles ? tiled : stored] = terms[ROWS * ng + (to_tiles ? stored : tiled)];
            }
            for (int64_t c = 0; c < K / 8; c++)
                for (int64_t j = 0; j < 4; j++) {
                    uint8_t *byte = (to_tiles ? tile : copy) + c * CHUNK + 4 * r + j;
                    if (to_tiles) {
                        const uint8_t *row = copy + r * (K / 2);
                        *byte = nibble(row, 8 * c + j) | nibble(row, 8 * c + 4 + j) << 4;
                    } else {
                        uint8_t *row = tile + r * (K / 2);
                        const int64_t lo = 8 * c + j, hi = lo + 4;
                        row[lo / 2] = (row[lo / 2] & (0xF0 >> 4 * (lo & 1))) | (*byte & 15) << 4 * (lo & 1);
                        row[hi / 2] = (row[hi / 2] & (0xF0 >> 4 * (hi & 1))) | (*byte >> 4) << 4 * (hi & 1);
                    }
                }
        }
        free(copy), free(terms);
    }
}

typedef struct {
    const int8_t *xq; const float *xscales, *sums, *qsums; /* activations, per group */
    const uint8_t *w; const uint16_t *scales, *zeros;
    int64_t N, K, group;
    float *out;
} tile_args;

static inline __m128i broadcast4(const int8_t *src) {
    int32_t v;
    memcpy(&v, src, 4);
    return _mm_set1_epi32(v);
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
/* up to 8 activation rows a pass: each unpacked chunk serves them all (prompts, experts) */
#define TILE_MT 8
ALWAYS_INLINE void tile512(const tile_args *a, const int MT, int64_t r0, int64_t p) {
    const int64_t K = a->K, ng = K / a->group, chunks = a->group / 8;
    const uint8_t *w = a->w + p * ROWS * (K / 2);
    const uint16_t *sc = a->scales + p * ROWS * ng, *zr = a->zeros + p * ROWS * ng;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[TILE_MT];
    for (int t = 0; t < MT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        /* two chains per activation row (even and odd chunks), each taking a chunk's low and
         * high nibbles in turn: with up to 8 rows, 16 chains hide vpdpbusd's latency and leave
         * registers for the weights; chunks per group are even */
        __m512i even[TILE_MT], odd[TILE_MT];
        for (int t = 0; t < MT; t++) even[t] = odd[t] = _mm512_setzero_si512();
        for (int64_t c = g * chunks; c < (g + 1) * chunks; c += 2) {
            const uint8_t *src = w + c * CHUNK;
            _mm_prefetch((const char *)src + AHEAD_BYTES, _MM_HINT_T1);
            _mm_prefetch((const char *)src + CHUNK + AHEAD_BYTES, _MM_HINT_T1);
            const __m512i v = _mm512_loadu_si512((const void *)src), v2 = _mm512_loadu_si512((const void *)(src + CHUNK));
            const __m512i wl = _mm512_and_si512(v, low), wh = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            const __m512i wl2 = _mm512_and_si512(v2, low), wh2 = _mm512_and_si512(_mm512_srli_epi16(v2, 4), low);
            for (int t = 0; t < MT; t++) {
                const int8_t *xk = a->xq + (r0 + t) * K + 8 * c;
                even[t] = _mm512_dpbusd_epi32(even[t], wl, _mm512_broadcastd_epi32(broadcast4(xk)));
                odd[t] = _mm512_dpbusd_epi32(odd[t], wl2, _mm512_broadcastd_epi32(broadcast4(xk + 8)));
                even[t] = _mm512_dpbusd_epi32(even[t], wh, _mm512_broadcastd_epi32(broadcast4(xk + 4)));
                odd[t] = _mm512_dpbusd_epi32(odd[t], wh2, _mm512_broadcastd_epi32(broadcast4(xk + 12)));
            }
        }
        const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + g * ROWS)));
        const __m512 z = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(zr + g * ROWS)));
        for (int t = 0; t < MT; t++) {
            const int64_t i = (r0 + t) * ng + g;
            const __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(even[t], odd[t]));
            const __m512 centred = _mm512_fmsub_ps(dot, _mm512_set1_ps(a->xscales[i]), _mm512_set1_ps(8.f * a->qsums[i]));
            acc[t] = _mm512_fmadd_ps(s, centred, _mm512_fmadd_ps(z, _mm512_set1_ps(a->sums[i]), acc[t]));
        }
    }
    for (int t = 0; t < MT; t++) _mm512_storeu_ps(a->out + (r0 + t) * a->N + p * ROWS, acc[t]);
}
#define TILE tile512
#else
/* chunks summed between widenings; chunks per group (4, 8 or 16) are a multiple */
#define WIDEN_EVERY 4
#if defined(DPBUSD256)
static inline __m256i dot_nibbles(__m256i acc, __m256i wl, __m256i xl, __m256i wh, __m256i xh) {
    return DPBUSD256(DPBUSD256(acc, wl, xl), wh, xh);
}
static inline __m256i widen_add(__m256i acc, __m256i part) { return _mm256_add_epi32(acc, part); }
#else
/* vpmaddubsw's pair sums of nibbles (<= 15) and |x| <= 127 are at most 3810: eight of them (two
 * per chunk, 4 chunks) add up in int16 lanes before one vpmaddwd widens them, which saves two
 * instructions per product against widening each */
static inline __m256i dot_nibbles(__m256i acc, __m256i wl, __m256i xl, __m256i wh, __m256i xh) {
    return _mm256_add_epi16(acc, _mm256_add_epi16(_mm256_maddubs_epi16(wl, xl), _mm256_maddubs_epi16(wh, xh)));
}
static inline __m256i widen_add(__m256i acc, __m256i part) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(part, _mm256_set1_epi16(1)));
}
#endif

/* two 8-row halves of a tile, 256 bits each */
ALWAYS_INLINE void tile256(const tile_args *a, const int MT, int64_t r0, int64_t p) {
    const int64_t K = a->K, ng = K / a->group, chunks = a->group / 8;
    const uint8_t *w = a->w + p * ROWS * (K / 2);
    const uint16_t *sc = a->scales + p * ROWS * ng, *zr = a->zeros + p * ROWS * ng;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[4][2];
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        __m256i dot[4][2];
        for (int t = 0; t < MT; t++) dot[t][0] = dot[t][1] = _mm256_setzero_si256();
        for (int64_t c0 = g * chunks; c0 < (g + 1) * chunks; c0 += WIDEN_EVERY) {
            __m256i part[4][2];
            for (int t = 0; t < MT; t++) part[t][0] = part[t][1] = _mm256_setzero_si256();
            for (int64_t c = c0; c < c0 + WIDEN_EVERY; c++) {
                const uint8_t *src = w + c * CHUNK;
                _mm_prefetch((const char *)src + AHEAD_BYTES, _MM_HINT_T1);
                __m256i xlo[4], xhi[4];
                for (int t = 0; t < MT; t++) {
                    const int8_t *xk = a->xq + (r0 + t) * K + 8 * c;
                    xlo[t] = _mm256_broadcastd_epi32(broadcast4(xk));
                    xhi[t] = _mm256_broadcastd_epi32(broadcast4(xk + 4));
                }
                for (int h = 0; h < 2; h++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(src + 32 * h));
                    const __m256i wl = _mm256_and_si256(v, low), wh = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    for (int t = 0; t < MT; t++)
                        part[t][h] = dot_nibbles(part[t][h], wl, xlo[t], wh, xhi[t]);
                }
            }
            for (int t = 0; t < MT; t++)
                for (int h = 0; h < 2; h++) dot[t][h] = widen_add(dot[t][h], part[t][h]);
        }
        for (int h = 0; h < 2; h++) {
            const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + g * ROWS + 8 * h)));
            const __m256 z = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(zr + g * ROWS + 8 * h)));
            for (int t = 0; t < MT; t++) {
                const int64_t i = (r0 + t) * ng + g;
                const __m256 d = _mm256_cvtepi32_ps(dot[t][h]);
                const __m256 centred = _mm256_fmsub_ps(d, _mm256_set1_ps(a->xscales[i]), _mm256_set1_ps(8.f * a->qsums[i]));
                acc[t][h] = _mm256_fmadd_ps(s, centred, _mm256_fmadd_ps(z, _mm256_set1_ps(a->sums[i]), acc[t][h]));
            }
        }
    }
    for (int t = 0; t < MT; t++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(a->out + (r0 + t) * a->N + p * ROWS + 8 * h, acc[t][h]);
}
#define TILE tile256
#define TILE_MT 4
#endif

/* every row of tile p, TILE_MT at a time */
static void tile_rows(const tile_args *a, int64_t M, int64_t p) {
    for (int64_t r0 = 0; r0 < M; r0 += TILE_MT) {
        switch (M - r0 < TILE_MT ? M - r0 : TILE_MT) {
#if TILE_MT == 8
        case 8: TILE(a, 8, r0, p); break;
        case 7: TILE(a, 7, r0, p); break;
        case 6: TILE(a, 6, r0, p); break;
        case 5: TILE(a, 5, r0, p); break;
#endif
        case 4: TILE(a, 4, r0, p); break;
        case 3: TILE(a, 3, r0, p); break;
        case 2: TILE(a, 2, r0, p); break;
        default: TILE(a, 1, r0, p); break;
        }
    }
}

/* x (M, K) float32 @ tiled int4 W^T -> out (M, N); 0, or -1 if out of memory */
int minicpmv_linear_int4_tiles(const float *x, int64_t M, const uint8_t *w, const uint16_t *scales,
                               const uint16_t *zeros, int64_t N, int64_t K, int64_t group, float *out) {
    act_buffers b;
    if (minicpmv_quantize_activations(&b, x, M, K, group, 0)) return -1;
    const tile_args a = {b.q, b.scales, b.sums, b.qsums, w, scales, zeros, N, K, group, out};
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / ROWS; p++) tile_rows(&a, M, p);
    minicpmv_free_activations(&b);
    return 0;
}

/* `count` products of rows[i] rows each in one parallel region: each thread takes a contiguous
 * run of (product, tile) pairs of about equal cost (a tile of M rows: M + 1, its rows and its
 * stream of weights), in product order, so that its weights stream sequentially */
static void run_products(const tile_args *args, const int64_t *rows, int64_t count) {
    int64_t total = 0;
    for (int64_t i = 0; i < count; i++) total += args[i].N / ROWS * (rows[i] + 1);
#pragma omp parallel
    {
        const int64_t T = omp_get_num_threads(), t = omp_get_thread_num();
        const int64_t lo = total * t / T, hi = total * (t + 1) / T;
        int64_t start = 0; /* the cost of the products before this one */
        for (int64_t i = 0; i < count && start < hi; i++) {
            const int64_t per = rows[i] + 1, tiles = args[i].N / ROWS;
            /* this thread's tiles: those whose cost starts in [lo, hi) */
            const int64_t first = lo > start ? (lo - start + per - 1) / per : 0;
            const int64_t last = (hi - start + per - 1) / per;
            for (int64_t p = first; p < (last < tiles ? last : tiles); p++) tile_rows(args + i, rows[i], p);
            start += tiles * per;
        }
    }
}

/* `count` one-token products in one parallel region, their tiles shared out among the threads
 * in order (a mixture of experts' small linears: ~30 a layer, each under 1 MB). Measured one
 * call per linear: 31 us for 0.6 MB, 19 GB/s, against 26.5 GB/s for one 9 MB linear: each call
 * pays a fork, an activation pass and a cold start of every thread's stream. Products with the
 * same input (and K, group) share its quantized activations. 0, or -1 if out of memory. */
int minicpmv_int4_tiles_batch(const tile_product *products, int64_t count) {
    tile_args *args = malloc((size_t)count * sizeof *args);
    act_buffers *acts = calloc((size_t)count, sizeof *acts); /* owned by the first product of an input */
    int64_t *rows = malloc((size_t)count * sizeof *rows);
    int status = args && acts && rows ? 0 : -1;
    for (int64_t i = 0; i < count && !status; i++) {
        const tile_product *t = products + i;
        int64_t owner = 0; /* the first product with this input */
        while (owner < i && !(products[owner].x == t->x && products[owner].K == t->K && products[owner].group == t->group))
            owner++;
        if (owner == i && minicpmv_quantize_activations(acts + i, t->x, 1, t->K, t->group, 0)) {
            acts[i] = (act_buffers){0}; /* freed already */
            status = -1;
        }
        const act_buffers *b = acts + owner;
        args[i] = (tile_args){b->q, b->scales, b->sums, b->qsums, t->w, t->scales, t->zeros, t->N, t->K, t->group, t->out};
        rows[i] = 1;
    }
    if (!status) run_products(args, rows, count);
    for (int64_t i = 0; acts && i < count; i++) minicpmv_free_activations(acts + i); /* free(NULL) if shared */
    free(args), free(acts), free(rows);
    return status;
}

/* rows row0.. of the quantized activations b through linear l, into the same rows of out */
static tile_args rows_from(const act_buffers *b, int64_t row0, const linear_desc *l, float *out) {
    const int64_t ng = l->K / l->group;
    return (tile_args){b->q + row0 * l->K, b->scales + row0 * ng, b->sums + row0 * ng, b->qsums + row0 * ng,
                       l->w, l->scales, l->zeros, l->N, l->K, l->group, out + row0 * l->N};
}

/* each expert's products `which` (0 gate, 1 up, 2 down) of the rows in x, into out */
static int expert_products(const linear_desc *table, int64_t experts, const int64_t *counts, int64_t below,
                           const int *which, int kinds, const float *x, int64_t R, float *const *out, tile_args *args,
                           int64_t *rows) {
    act_buffers b;
    if (minicpmv_quantize_activations(&b, x, R, table[which[0]].K, table[which[0]].group, 0)) return -1;
    int64_t n = 0, row0 = 0;
    for (int64_t e = 0; e < experts; row0 += counts[e++])
        for (int j = 0; j < kinds && counts[e] && counts[e] < below; j++) {
            args[n] = rows_from(&b, row0, table + 3 * e + which[j], out[j]);
            rows[n++] = counts[e];
        }
    run_products(args, rows, n);
    minicpmv_free_activations(&b);
    return 0;
}

/* A prompt's tokens through their routed experts: x (R, D) holds counts[e] rows for each expert
 * e in turn, out (R, D) gets each row's down(silu(gate(x)) * up(x)) of its expert, for the
 * experts with fewer than `below` rows (the others' rows are left as they are); gate and up
 * (R, I) scratch. table (experts, 3): each expert's gate, up and down, tiled int4 without bias,
 * all of one shape, I % 8 == 0. Two parallel regions a layer (gates and ups, then downs), each
 * over all experts' tiles with the activations quantized once, instead of three calls an expert
 * (256 of them in 4.7's MoE, each a fork, an activation pass and ~60 us of Python).
 * 0, or -1 if out of memory. */
int minicpmv_int4_experts(const linear_desc *table, int64_t experts, const int64_t *counts, int64_t below,
                          const float *x, float *gate, float *up, float *out) {
    const int64_t I = table[0].N;
    int64_t R = 0;
    for (int64_t e = 0; e < experts; e++) R += counts[e];
    tile_args *args = malloc((size_t)(2 * experts) * sizeof *args);
    int64_t *rows = malloc((size_t)(2 * experts) * sizeof *rows);
    const int gate_up[2] = {0, 1}, down[1] = {2};
    float *const first[2] = {gate, up};
    int status = args && rows ? 0 : -1;
    if (!status) status = expert_products(table, experts, counts, below, gate_up, 2, x, R, first, args, rows);
    if (!status) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < R * I; i += 8)
            _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(gate + i)), _mm256_loadu_ps(up + i)));
        status = expert_products(table, experts, counts, below, down, 1, gate, R, &out, args, rows);
    }
    free(args), free(rows);
    return status;
}

/* int8 weights in the same tiles: 16 rows x 4 columns per 64 bytes (the panels of igemm.c), each
 * stored as w + 128. With AVX-512 VNNI, vpdpbusd takes them as its unsigned side against a
 * broadcast of 4 signed activation bytes: one instruction per 64 weight bytes; the offset comes
 * back per activation block: sum((w + 128) * xq) - 128 * sum(xq), the same for all rows. With
 * AVX-VNNI the same, a chunk as two 256-bit halves of 8 rows. On AVX2 the halves too, but w + 128
 * would saturate vpmaddubsw's pair sums (255 * 127 * 2), so w comes back signed, |w| is the
 * unsigned side and the sign of w moves onto x (exact: pairs of at most 2 * 128 * 127). */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define INT8_TILES 512
#else
#define INT8_TILES 256
#if defined(DPBUSD256)
#define INT8_OFFSET 128.f
static inline __m256i int8_dot(__m256i acc, __m256i v, __m256i x) { return DPBUSD256(acc, v, x); }
#else
#define INT8_OFFSET 0.f
static inline __m256i int8_dot(__m256i acc, __m256i v, __m256i x) {
    const __m256i w = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif
#endif

/* to_tiles 1: stored (N, K) -> tiles, 0: back; in place, N % 16 == 0, K % 4 == 0 */
void minicpmv_int8_tiles(int8_t *w, int64_t N, int64_t K, int to_tiles) {
    const int64_t bytes = ROWS * K;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / ROWS; p++) {
        int8_t *tile = w + p * bytes, *copy = malloc((size_t)bytes);
        if (!copy) abort(); /* a few hundred KB */
        memcpy(copy, tile, (size_t)bytes);
        for (int64_t r = 0; r < ROWS; r++)
            for (int64_t k = 0; k < K; k++) {
                const int64_t stored = r * K + k, tiled = (k / 4) * CHUNK + 4 * r + k % 4;
                tile[to_tiles ? tiled : stored] = (int8_t)(copy[to_tiles ? stored : tiled] ^ 0x80);
            }
        free(copy);
    }
}

typedef struct {
    const int8_t *xq; const float *xscales, *qsums; /* activations, per block */
    const uint8_t *w; const float *wscales;
    int64_t N, K, block;
    float *out;
} int8_args;

#if INT8_TILES == 512
ALWAYS_INLINE void int8_tile(const int8_args *a, const int MT, int64_t r0, int64_t p) {
    const int64_t K = a->K, nb = K / a->block, chunks = a->block / 4;
    const uint8_t *w = a->w + p * ROWS * K;
    __m512 acc[4];
    float offset[4] = {0.f, 0.f, 0.f, 0.f}; /* 128 * sum over blocks of sx * sum(xq) */
    for (int t = 0; t < MT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i dot[4];
        for (int t = 0; t < MT; t++) dot[t] = _mm512_setzero_si512();
        for (int64_t c = b * chunks; c < (b + 1) * chunks; c++) {
            _mm_prefetch((const char *)(w + c * CHUNK) + AHEAD_BYTES, _MM_HINT_T1);
            const __m512i v = _mm512_loadu_si512((const void *)(w + c * CHUNK));
            for (int t = 0; t < MT; t++)
                dot[t] = _mm512_dpbusd_epi32(dot[t], v, _mm512_broadcastd_epi32(broadcast4(a->xq + (r0 + t) * K + 4 * c)));
        }
        for (int t = 0; t < MT; t++) {
            const int64_t i = (r0 + t) * nb + b;
            offset[t] += 128.f * a->qsums[i];
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t]), _mm512_set1_ps(a->xscales[i]), acc[t]);
        }
    }
    const __m512 wscale = _mm512_loadu_ps(a->wscales + p * ROWS);
    for (int t = 0; t < MT; t++)
        _mm512_storeu_ps(a->out + (r0 + t) * a->N + p * ROWS,
                         _mm512_mul_ps(_mm512_sub_ps(acc[t], _mm512_set1_ps(offset[t])), wscale));
}
#else
/* AVX-VNNI and AVX2: rows 0-7 of a chunk in its first 32 bytes, rows 8-15 in the second */
ALWAYS_INLINE void int8_tile(const int8_args *a, const int MT, int64_t r0, int64_t p) {
    const int64_t K = a->K, nb = K / a->block, chunks = a->block / 4;
    const uint8_t *w = a->w + p * ROWS * K;
    __m256 acc[4][2];
    float offset[4] = {0.f, 0.f, 0.f, 0.f}; /* INT8_OFFSET * sum over blocks of sx * sum(xq) */
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i dot[4][2];
        for (int t = 0; t < MT; t++) dot[t][0] = dot[t][1] = _mm256_setzero_si256();
        for (int64_t c = b * chunks; c < (b + 1) * chunks; c++) {
            _mm_prefetch((const char *)(w + c * CHUNK) + AHEAD_BYTES, _MM_HINT_T1);
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + c * CHUNK));
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + c * CHUNK + 32));
            for (int t = 0; t < MT; t++) {
                const __m256i x = _mm256_broadcastd_epi32(broadcast4(a->xq + (r0 + t) * K + 4 * c));
                dot[t][0] = int8_dot(dot[t][0], v0, x);
                dot[t][1] = int8_dot(dot[t][1], v1, x);
            }
        }
        for (int t = 0; t < MT; t++) {
            const int64_t i = (r0 + t) * nb + b;
            offset[t] += INT8_OFFSET * a->qsums[i];
            for (int h = 0; h < 2; h++)
                acc[t][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t][h]), _mm256_set1_ps(a->xscales[i]), acc[t][h]);
        }
    }
    for (int h = 0; h < 2; h++) {
        const __m256 wscale = _mm256_loadu_ps(a->wscales + p * ROWS + 8 * h);
        for (int t = 0; t < MT; t++)
            _mm256_storeu_ps(a->out + (r0 + t) * a->N + p * ROWS + 8 * h,
                             _mm256_mul_ps(_mm256_sub_ps(acc[t][h], _mm256_set1_ps(offset[t])), wscale));
    }
}
#endif

/* x (M, K) float32 @ int8 tiles^T * wscales -> out (M, N); activations in blocks of 64 (32 where
 * K % 64 != 0). 0, -1 if out of memory. */
int minicpmv_linear_int8_tiles(const float *x, int64_t M, const uint8_t *w, const float *wscales, int64_t N,
                               int64_t K, float *out) {
    const int64_t block = K % 64 == 0 ? 64 : 32;
    act_buffers b;
    if (minicpmv_quantize_activations(&b, x, M, K, block, 0)) return -1;
    const int8_args a = {b.q, b.scales, b.qsums, w, wscales, N, K, block, out};
    FOR_TILES(int8_tile, &a, M, N);
    minicpmv_free_activations(&b);
    return 0;
}
