/* The vision tower's multi-head attention with both products in int8 (igemm.h), where float32
 * attention is the largest part left once the linears are int8 (a quarter of a crop on an AVX2
 * CPU). For each crop and head:
 *   S = Q K^T / sqrt(hd): Q's rows quantized as any activation row, K per key (the weight's
 *       channels are the keys);
 *   P = softmax(S) row by row over the crop's real keys: e = exp(s - max) in [0, 1] as unsigned
 *       bytes (softmax_row), the row's 1 / sum e folded into its scale;
 *   O = P V: V^T is the weight, quantized per feature over the keys.
 * Query rows go in blocks of ATTN_ROWS whose scores (ATTN_ROWS x keys floats) and P stay in L2
 * between the two products; a head's packed K and V stay in L2 for all its blocks. Keys past a
 * crop's count (the padding of a shorter crop in a batch) are left out of the softmax. */
#include "igemm.h"

#define ATTN_ROWS 32

/* A head's rows are hd floats of each (H * hd)-float token: a stride the hardware prefetchers do
 * not follow, and reading them unprefetched cost 3-5x (or a head-major copy of q, k and v, 2 ms a
 * layer). So every loop over rows asks for the row AHEAD rows on. */
#define AHEAD 8

static inline void prefetch_row(const float *row, int64_t hd) {
    for (int64_t d = 0; d < hd; d += 16) _mm_prefetch((const char *)(row + d), _MM_HINT_T0);
    _mm_prefetch((const char *)(row + hd - 1), _MM_HINT_T0);
}

/* 8 floats * inv rounded -> 8 int32 (|x * inv| <= 127: no clamp needed) */
static inline __m256i round8(const float *x, __m256 inv) { return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inv)); }

static inline __m256 abs8(const float *x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), _mm256_loadu_ps(x)); }

/* K of one head (`keys` rows of hd floats, `ld` apart) -> packed panels of keys (minicpmv_pack_int8's layout:
 * a key's 4 consecutive features are 4 bytes of its panel's k-step); each key's scale (times
 * `scale`, the softmax's 1 / sqrt(hd)) and 128 * its sum */
static void pack_keys(const float *k, int64_t ld, int64_t keys, int64_t hd, float levels, float scale,
                      int8_t *packed, int32_t *colsum, float *scales) {
    const int64_t K4 = round4(hd);
    for (int64_t n = 0; n < keys; n++) {
        const float *row = k + n * ld;
        if (n + AHEAD < keys) prefetch_row(row + AHEAD * ld, hd);
        __m256 top = _mm256_setzero_ps();
        int64_t d = 0;
        for (; d + 8 <= hd; d += 8) top = _mm256_max_ps(top, abs8(row + d));
        float amax = max8(top);
        for (; d < hd; d++) amax = fmaxf(amax, fabsf(row[d]));
        const float step = amax > 0.f ? amax / levels : 1.f, inv = 1.f / step;
        int8_t *dst = packed + (n / PANEL) * K4 * PANEL + (n % PANEL) * 4; /* then a k-step every 64 bytes */
        __m256i total = _mm256_setzero_si256();
        for (d = 0; d + 8 <= hd; d += 8) {
            const __m256i q = round8(row + d, _mm256_set1_ps(inv));
            const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
            const __m128i bytes = _mm_packs_epi16(words, words);
            const int32_t low = _mm_cvtsi128_si32(bytes), high = _mm_extract_epi32(bytes, 1);
            memcpy(dst + (d / 4) * PANEL * 4, &low, 4), memcpy(dst + (d / 4 + 1) * PANEL * 4, &high, 4);
            total = _mm256_add_epi32(total, q);
        }
        int32_t sum = isum8(total);
        for (; d < hd; d++) {
            const int32_t q = _mm_cvtss_si32(_mm_set_ss(row[d] * inv));
            dst[(d / 4) * PANEL * 4 + d % 4] = (int8_t)q, sum += q;
        }
        colsum[n] = 128 * sum, scales[n] = step * scale;
    }
}

/* V of one head (`keys` rows of hd floats, `ld` apart) -> V^T (hd channels x keys) packed, each feature
 * quantized over the keys. Four keys at a time: feature d's bytes of keys n..n+3 are one 32-bit
 * word of its panel's k-step, so 8 features' words are one store. `inv`: hd floats of scratch. */
static void pack_values(const float *v, int64_t ld, int64_t keys, int64_t hd, float levels, int8_t *packed,
                        float *scales, float *inv) {
    const int64_t K4 = round4(keys), whole = hd / 8 * 8;
    for (int64_t d = 0; d < hd; d++) scales[d] = 0.f;
    for (int64_t n = 0; n < keys; n++) {
        if (n + AHEAD < keys) prefetch_row(v + (n + AHEAD) * ld, hd);
        for (int64_t d = 0; d < whole; d += 8)
            _mm256_storeu_ps(scales + d, _mm256_max_ps(_mm256_loadu_ps(scales + d), abs8(v + n * ld + d)));
        for (int64_t d = whole; d < hd; d++) scales[d] = fmaxf(scales[d], fabsf(v[n * ld + d]));
    }
    for (int64_t d = 0; d < hd; d++) {
        scales[d] = scales[d] > 0.f ? scales[d] / levels : 1.f;
        inv[d] = 1.f / scales[d];
    }
    for (int64_t n = 0; n < K4; n += 4) {
        const int64_t rows = keys - n < 4 ? keys - n : 4; /* the last step's missing keys: 0 */
        for (int64_t j = AHEAD; j < AHEAD + 4; j++)
            if (n + j < keys) prefetch_row(v + (n + j) * ld, hd);
        for (int64_t d = 0; d < whole; d += 8) {
            const __m256 scale = _mm256_loadu_ps(inv + d);
            __m256i word = _mm256_setzero_si256();
            for (int64_t j = 0; j < rows; j++) {
                const __m256i q = round8(v + (n + j) * ld + d, scale);
                word = _mm256_or_si256(word, _mm256_slli_epi32(_mm256_and_si256(q, _mm256_set1_epi32(0xFF)), 8 * (int)j));
            }
            _mm256_storeu_si256((__m256i *)(packed + (d / PANEL) * K4 * PANEL + n * PANEL + (d % PANEL) * 4), word);
        }
        for (int64_t d = whole; d < hd; d++)
            for (int64_t j = 0; j < rows; j++) {
                const int32_t q = _mm_cvtss_si32(_mm_set_ss(v[(n + j) * ld + d] * inv[d]));
                packed[(d / PANEL) * K4 * PANEL + n * PANEL + (d % PANEL) * 4 + j] = (int8_t)q;
            }
    }
}

/* e^x for x <= 0 to within 5e-5 (a degree-4 polynomial of 2^f, f in [-1/2, 1/2]): P keeps at most
 * 8 bits, whose step (1/255) is 78 times that, and this exp costs half of exp8's instructions */
static inline __m256 exp8_coarse(__m256 x) {
    const __m256 t = _mm256_mul_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(1.44269504f));
    const __m256 n = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm256_sub_ps(t, n);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(9.61813e-3f), f, _mm256_set1_ps(5.55041e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.240227f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.693147f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
}

/* a row of scores -> P's bytes (K4, zero padded) in one pass: e = exp(s - max) over the first
 * `keys`, round(levels e) (the largest is `levels`: the row's own range) unsigned, with no zero
 * point or offset, so that V needs no column sums; the row's scale 1 / (levels sum e) also
 * normalizes it. levels: 255 for VNNI's unsigned side; 127 for AVX2, whose two-step 16-bit sums
 * need 7-bit rows. (P's rounding is most of the attention's error: on the demo model's trained
 * attention 0.87% relative L2 at 7 bits, 0.44% at 8; K's or V's 7 bits 0.3% each.) */
static void softmax_row(const float *s, int64_t keys, int64_t K4, float levels, int8_t *dst, float *scale) {
    /* four running maxima and two sums: one would wait on its own latency every 8 keys */
    __m256 top4[4] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY),
                      _mm256_set1_ps(-INFINITY)};
    int64_t k = 0;
    for (; k + 32 <= keys; k += 32)
        for (int j = 0; j < 4; j++) top4[j] = _mm256_max_ps(top4[j], _mm256_loadu_ps(s + k + 8 * j));
    for (; k + 8 <= keys; k += 8) top4[0] = _mm256_max_ps(top4[0], _mm256_loadu_ps(s + k));
    float top = max8(_mm256_max_ps(_mm256_max_ps(top4[0], top4[1]), _mm256_max_ps(top4[2], top4[3])));
    for (; k < keys; k++) top = fmaxf(top, s[k]);
    __m256 sums[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    for (k = 0; k + 8 <= keys; k += 8) {
        const __m256 e = exp8_coarse(_mm256_sub_ps(_mm256_loadu_ps(s + k), _mm256_set1_ps(top)));
        sums[(k / 8) & 1] = _mm256_add_ps(sums[(k / 8) & 1], e);
        const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(e, _mm256_set1_ps(levels)));
        const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64((__m128i *)(dst + k), _mm_packus_epi16(words, words));
    }
    float sum = sum8(_mm256_add_ps(sums[0], sums[1]));
    for (; k < keys; k++) {
        float e[8] = {s[k] - top};
        _mm256_storeu_ps(e, exp8_coarse(_mm256_loadu_ps(e)));
        sum += e[0];
        dst[k] = (int8_t)_mm_cvtss_si32(_mm_set_ss(levels * e[0]));
    }
    for (; k < K4; k++) dst[k] = 0;
    *scale = 1.f / (levels * sum);
}

typedef struct {
    const float *q;
    float *out;
    const int64_t *keys;
    int64_t L, H, hd, D;
    const int8_t *pk, *pv; /* per crop and head: packed K (kbytes), packed V^T (vbytes) */
    const int32_t *kc;
    const int32_t *no_zeros; /* P's zero points and V's column sums: P has no offset */
    const float *ks, *vs;
    int64_t kbytes, vbytes, kchannels, vchannels;
    int mode, narrow;
} attention;

typedef struct {
    int8_t *xq, *pq;
    float *xs, *ps, *scores;
    int32_t *xz;
} scratch;

static void all_tiles(const igemm_args *g) {
    for (int64_t ct = 0; ct < (g->panels + STEP - 1) / STEP; ct++)
        for (int64_t rt = 0; rt < (g->M + MR - 1) / MR; rt++) micro_tile(g, rt, ct);
}

/* rows row0 .. row0 + ATTN_ROWS of crop and head i (= b * H + h) */
static void attend_block(const attention *a, int64_t i, int64_t row0, const scratch *s) {
    const int64_t b = i / a->H, h = i % a->H, keys = a->keys[b], K4q = round4(a->hd), K4p = round4(keys);
    const int64_t rows = a->L - row0 < ATTN_ROWS ? a->L - row0 : ATTN_ROWS, stride = panels_of(a->L) * PANEL;
    const int64_t first = (b * a->L + row0) * a->D + h * a->hd; /* (b, row0, h)'s place in q and out */
    for (int64_t r = 0; r < rows; r++) {
        if (r + AHEAD < rows) prefetch_row(a->q + first + (r + AHEAD) * a->D, a->hd);
        quantize_row(a->q + first + r * a->D, a->hd, K4q, s->xq + r * K4q, s->xs + r, s->xz + r, a->mode);
    }
    for (int64_t r = rows; r < rows + AHEAD && row0 + r < a->L; r++) /* the next block's first rows */
        prefetch_row(a->q + first + r * a->D, a->hd);
    const igemm_args scores = {
        .xq = s->xq, .packed = a->pk + i * a->kbytes, .xs = s->xs, .wscales = a->ks + i * a->kchannels,
        .xzeros = s->xz, .colsum = a->kc + i * a->kchannels, .M = rows, .N = keys, .K4 = K4q,
        .panels = panels_of(keys), .ldo = stride, .narrow = a->narrow, .out = s->scores,
    };
    all_tiles(&scores);
    for (int64_t r = 0; r < rows; r++)
        softmax_row(s->scores + r * stride, keys, K4p, a->mode == OFFSET ? 255.f : 127.f, s->pq + r * K4p, s->ps + r);
    const igemm_args values = {
        .xq = s->pq, .packed = a->pv + i * a->vbytes, .xs = s->ps, .wscales = a->vs + i * a->vchannels,
        .xzeros = a->no_zeros, .colsum = a->no_zeros, .M = rows, .N = a->hd, .K4 = K4p,
        .panels = panels_of(a->hd), .ldo = a->D, .narrow = a->narrow, .out = a->out + first,
    };
    all_tiles(&values);
}

/* per thread: a block's quantized queries, scores and P */
static int scratch_alloc(scratch *s, const attention *a) {
    const int64_t rows = ATTN_ROWS, K4q = round4(a->hd), K4p = round4(a->L), stride = panels_of(a->L) * PANEL;
    s->xq = calloc((size_t)(rows * K4q), 1), s->pq = calloc((size_t)(rows * K4p), 1);
    s->xs = malloc(rows * sizeof(float)), s->ps = malloc(rows * sizeof(float));
    s->xz = malloc(rows * sizeof(int32_t));
    s->scores = malloc((size_t)(rows * stride) * sizeof(float));
    return s->xq && s->pq && s->xs && s->ps && s->xz && s->scores;
}

static void scratch_free(scratch *s) { free(s->xq), free(s->pq), free(s->xs), free(s->ps), free(s->xz), free(s->scores); }

/* q, k, v, out (B, L, H * hd) float32; keys (B): each crop's real keys (<= L, a prefix); scale:
 * the softmax's 1 / sqrt(hd); narrow as minicpmv_igemm (7-bit K and V, 7-bit rows on AVX2).
 * Returns 0, or -1 without memory. */
int minicpmv_attend_int8(const float *q, const float *k, const float *v, int64_t B, int64_t L, int64_t H, int64_t hd,
                         const int64_t *keys, float scale, int narrow, float *out) {
    attention a = {.q = q, .out = out, .keys = keys, .L = L, .H = H, .hd = hd, .D = H * hd};
    a.mode = activation_mode(&narrow), a.narrow = narrow;
    a.kchannels = panels_of(L) * PANEL, a.vchannels = panels_of(hd) * PANEL;
    a.kbytes = a.kchannels * round4(hd), a.vbytes = a.vchannels * round4(L);
    const int64_t heads = B * H;
    const float levels = narrow ? 63.f : 127.f;
    int8_t *pk = calloc((size_t)(heads * a.kbytes), 1), *pv = calloc((size_t)(heads * a.vbytes), 1);
    int32_t *kc = calloc((size_t)(heads * a.kchannels), sizeof(int32_t));
    int32_t *zeros = calloc((size_t)(a.vchannels > ATTN_ROWS ? a.vchannels : ATTN_ROWS), sizeof(int32_t));
    float *ks = calloc((size_t)(heads * a.kchannels), sizeof(float)), *vs = calloc((size_t)(heads * a.vchannels), sizeof(float));
    int failed = !pk || !pv || !kc || !zeros || !ks || !vs;
    a.pk = pk, a.pv = pv, a.kc = kc, a.no_zeros = zeros, a.ks = ks, a.vs = vs;
    const int64_t blocks = (L + ATTN_ROWS - 1) / ATTN_ROWS;
#pragma omp parallel
    {
        float *inv = malloc((size_t)hd * sizeof(float));
        scratch s;
        const int ready = scratch_alloc(&s, &a) && inv;
#pragma omp atomic
        failed += !ready;
#pragma omp barrier
        if (!failed) {
#pragma omp for schedule(static)
            for (int64_t i = 0; i < heads; i++) {
                const float *kh = k + (i / H) * L * a.D + (i % H) * hd, *vh = v + (kh - k);
                pack_keys(kh, a.D, keys[i / H], hd, levels, scale, pk + i * a.kbytes, kc + i * a.kchannels, ks + i * a.kchannels);
                pack_values(vh, a.D, keys[i / H], hd, levels, pv + i * a.vbytes, vs + i * a.vchannels, inv);
            }
#pragma omp for schedule(static)
            for (int64_t item = 0; item < heads * blocks; item++) attend_block(&a, item / blocks, (item % blocks) * ATTN_ROWS, &s);
        }
        free(inv), scratch_free(&s);
    }
    free(pk), free(pv), free(kc), free(zeros), free(ks), free(vs);
    return failed ? -1 : 0;
}
