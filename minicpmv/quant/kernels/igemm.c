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
 * the sign of w moved onto x (exact for 8-bit x: 4 instructions per 32 products); where the
 * caller's weights are in [-63, 63] (`narrow`), x offset to unsigned 8 bits as for VNNI (3
 * instructions, NARROW_WEIGHTS) or in 7 unsigned bits with a zero point per row (2.5, 1.8x:
 * NARROW_BOTH).
 */
#include "igemm.h"

/* per-row sums of 4 rows' 4-byte groups (a 32-bit lane each) of a and b, added to acc (|bytes| <=
 * 127: the 16-bit pair sums cannot overflow) */
static inline __m128i add_row_sums(__m128i acc, __m128i a, __m128i b) {
    const __m128i ones = _mm_set1_epi8(1);
    const __m128i pairs = _mm_add_epi16(_mm_maddubs_epi16(ones, a), _mm_maddubs_epi16(ones, b));
    return _mm_add_epi32(acc, _mm_madd_epi16(pairs, _mm_set1_epi16(1)));
}

/* one panel's slots from k4 = `from` on, byte by byte (a last part-filled panel, K's tail), its
 * channels' sums added to totals */
static void pack_panel_bytes(const int8_t *w, int64_t N, int64_t K, int64_t p, int64_t from, int8_t *panel,
                             int32_t totals[PANEL]) {
    const int64_t K4 = round4(K);
    for (int64_t k4 = from; k4 < K4; k4 += 4)
        for (int64_t c = 0; c < PANEL; c++)
            for (int64_t j = 0; j < 4; j++) {
                const int64_t n = p * PANEL + c, k = k4 + j;
                const int8_t v = (n < N && k < K) ? w[n * K + k] : 0;
                panel[k4 * PANEL + 4 * c + j] = v;
                totals[c] += v;
            }
}

/* w (N, K) int8 -> packed (ceil(N/16), K4/4, 16, 4) with K4 = K rounded up to 4, zero padded;
 * colsum (N) = 128 * sum_k w[n, k] (the VNNI offset correction). Built per call for an int8
 * prefill where the weight has no tiles (AVX2): 16 columns of 4 rows at a time, a 4 x 4 transpose
 * of 32-bit groups (5x the byte loop). */
void minicpmv_pack_int8(const int8_t *w, int64_t N, int64_t K, int8_t *packed, int32_t *colsum) {
    const int64_t K4 = round4(K), panels = panels_of(N);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        int8_t *panel = packed + p * K4 * PANEL;
        int32_t totals[PANEL] = {0};
        int64_t k = 0;
        if ((p + 1) * PANEL <= N) {
            __m128i sums[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
            for (; k + 16 <= K; k += 16)
                for (int64_t quad = 0; quad < 4; quad++) { /* rows 4 quad .. 4 quad + 3 */
                    const int8_t *row = w + (p * PANEL + 4 * quad) * K + k;
                    const __m128i r0 = _mm_loadu_si128((const __m128i *)row), r1 = _mm_loadu_si128((const __m128i *)(row + K));
                    const __m128i r2 = _mm_loadu_si128((const __m128i *)(row + 2 * K)), r3 = _mm_loadu_si128((const __m128i *)(row + 3 * K));
                    const __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpacklo_epi32(r2, r3);
                    const __m128i t2 = _mm_unpackhi_epi32(r0, r1), t3 = _mm_unpackhi_epi32(r2, r3);
                    /* slot s of these 16 columns: the 4 rows' bytes k + 4s .. k + 4s + 3 */
                    const __m128i s0 = _mm_unpacklo_epi64(t0, t1), s1 = _mm_unpackhi_epi64(t0, t1);
                    const __m128i s2 = _mm_unpacklo_epi64(t2, t3), s3 = _mm_unpackhi_epi64(t2, t3);
                    int8_t *dst = panel + k * PANEL + 16 * quad;
                    _mm_storeu_si128((__m128i *)dst, s0), _mm_storeu_si128((__m128i *)(dst + 4 * PANEL), s1);
                    _mm_storeu_si128((__m128i *)(dst + 8 * PANEL), s2), _mm_storeu_si128((__m128i *)(dst + 12 * PANEL), s3);
                    sums[quad] = add_row_sums(add_row_sums(sums[quad], s0, s1), s2, s3);
                }
            for (int64_t quad = 0; quad < 4; quad++) _mm_storeu_si128((__m128i *)(totals + 4 * quad), sums[quad]);
        }
        pack_panel_bytes(w, N, K, p, k, panel, totals);
        for (int64_t c = 0; c < PANEL && p * PANEL + c < N; c++) colsum[p * PANEL + c] = 128 * totals[c];
    }
}

/* The same from int8 decoding tiles (kernels/tiles.c: the panels' layout, each byte w + 128;
 * N % 16 == 0, K % 4 == 0). */
void minicpmv_pack_int8_tiles(const uint8_t *tiles, int64_t N, int64_t K, int8_t *packed, int32_t *colsum) {
    const int64_t chunk = PANEL * 4;
    const __m128i flip = _mm_set1_epi8((char)0x80);
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / PANEL; p++) {
        __m128i sums[4] = {_mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128(), _mm_setzero_si128()};
        for (int64_t c = p * K / 4; c < (p + 1) * K / 4; c++)
            for (int64_t quad = 0; quad < 4; quad++) { /* 16 bytes: rows 4 quad .. 4 quad + 3 */
                const int64_t at = c * chunk + 16 * quad;
                const __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(tiles + at)), flip);
                _mm_storeu_si128((__m128i *)(packed + at), v);
                sums[quad] = add_row_sums(sums[quad], v, _mm_setzero_si128());
            }
        int32_t totals[PANEL];
        for (int64_t quad = 0; quad < 4; quad++) _mm_storeu_si128((__m128i *)(totals + 4 * quad), sums[quad]);
        for (int64_t r = 0; r < PANEL; r++) colsum[p * PANEL + r] = 128 * totals[r];
    }
}

/* int4 weights (N, K/2 bytes, low nibble first; float16 scales and zeros per group, w = q * s +
 * zero - 8 s) -> the layout of minicpmv_pack_int8 with per-channel scales, so that a prefill (many
 * rows) runs in minicpmv_igemm: built per call, it costs a pass over the weight, not a copy kept.
 * |w| of a channel peaks at q = 0 or q = 15 of some group, so its scale comes from the group
 * parameters alone; each group's 16 values are rounded once into a table. The requantized weight
 * is within half a step (absmax / 254, or / 126 with 63 levels) of the int4 one, a fraction of the
 * int4 step. K % 4 == 0. */
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

/* The per-channel scale of an int4 row whose group parameters are `stride` apart, for integers
 * in [-levels, levels] (127, or 63 for NARROW_WEIGHTS). */
static float int4_channel_scale(const uint16_t *scales, const uint16_t *zeros, int64_t stride, int64_t ng, int levels) {
    float amax = 0.f;
    for (int64_t g = 0; g < ng; g++) {
        const float s = half_to_float(scales[g * stride]), base = half_to_float(zeros[g * stride]) - 8.f * s;
        const float ends = fmaxf(fabsf(base), fabsf(15.f * s + base));
        amax = ends > amax ? ends : amax;
    }
    return amax / (float)levels;
}

/* a group's 16 int4 values requantized with 1 / the channel scale: (q s + base) inv, multiplied
 * and added apart as in C without -ffp-contract (both packs below agree byte for byte) */
static inline __m128i int4_group_table(uint16_t scale, uint16_t zero, float inv) {
    const float s = half_to_float(scale), base = half_to_float(zero) - 8.f * s;
    __m128i q[4];
    for (int i = 0; i < 4; i++) {
        const __m128 levels = _mm_setr_ps(4.f * i, 4.f * i + 1.f, 4.f * i + 2.f, 4.f * i + 3.f);
        const __m128 v = _mm_add_ps(_mm_mul_ps(levels, _mm_set1_ps(s)), _mm_set1_ps(base));
        q[i] = _mm_cvtps_epi32(_mm_mul_ps(v, _mm_set1_ps(inv)));
    }
    return _mm_packs_epi16(_mm_packs_epi32(q[0], q[1]), _mm_packs_epi32(q[2], q[3]));
}
void minicpmv_pack_int4_as_int8(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N,
                                int64_t K, int64_t group, int levels, int8_t *packed, int32_t *colsum, float *wscales) {
    const int64_t panels = panels_of(N), ng = K / group;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < panels; p++) {
        int8_t *dst = packed + p * K * PANEL;
        for (int64_t c = 0; c < PANEL; c++) {
            const int64_t n = p * PANEL + c;
            if (n >= N) { /* the padding channels of the last panel */
                for (int64_t k = 0; k < K; k++) dst[(k / 4) * PANEL * 4 + c * 4 + k % 4] = 0;
                continue;
            }
            const float scale = int4_channel_scale(scales + n * ng, zeros + n * ng, 1, ng, levels);
            const float inv = scale > 0.f ? 1.f / scale : 0.f;
            int32_t total = 0;
            for (int64_t g = 0; g < ng; g++) {
                int8_t table[16];
                _mm_storeu_si128((__m128i *)table, int4_group_table(scales[n * ng + g], zeros[n * ng + g], inv));
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

/* 8 rows' bytes (rows 4L + e in 32-bit lane e of 128-bit lane L) through their own 16-entry
 * tables: t[e] holds row e's table in lane 0 and row 4 + e's in lane 1 */
static inline __m256i lookup_rows(const __m256i t[4], __m256i idx) {
    __m256i v = _mm256_shuffle_epi8(t[0], idx);
    v = _mm256_blend_epi32(v, _mm256_shuffle_epi8(t[1], idx), 0x22);
    v = _mm256_blend_epi32(v, _mm256_shuffle_epi8(t[2], idx), 0x44);
    return _mm256_blend_epi32(v, _mm256_shuffle_epi8(t[3], idx), 0x88);
}

/* The same from int4 decoding tiles (kernels/tiles.c, N % 16 == 0): a tile is a panel; the low
 * nibbles of its 64-byte chunk c are the panel's slot 2c and the high nibbles slot 2c + 1, each
 * byte in place. Per group each row's 16 values go into a table, and vpshufb looks 8 rows' bytes
 * up at once (a pass at 4x the byte loop's rate: it was half of a 128-token int4 prefill on
 * AVX-512). */
void minicpmv_pack_int4_tiles_as_int8(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int64_t N,
                                      int64_t K, int64_t group, int levels, int8_t *packed, int32_t *colsum,
                                      float *wscales) {
    const int64_t ng = K / group, chunks = group / 8, chunk = PANEL * 4;
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < N / PANEL; p++) {
        const uint8_t *tile = w + p * PANEL * (K / 2);
        const uint16_t *sc = scales + p * PANEL * ng, *zr = zeros + p * PANEL * ng; /* (ng, 16) */
        int8_t *dst = packed + p * PANEL * K;
        float inv[PANEL];
        for (int64_t r = 0; r < PANEL; r++) {
            const float scale = int4_channel_scale(sc + r, zr + r, PANEL, ng, levels);
            inv[r] = scale > 0.f ? 1.f / scale : 0.f;
            wscales[p * PANEL + r] = scale;
        }
        const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi8(1);
        __m256i sums[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}; /* rows 0-7, 8-15 */
        for (int64_t g = 0; g < ng; g++) {
            __m128i table[PANEL];
            for (int64_t r = 0; r < PANEL; r++) table[r] = int4_group_table(sc[g * PANEL + r], zr[g * PANEL + r], inv[r]);
            __m256i t[2][4]; /* half h: rows 8h .. 8h + 7 */
            for (int h = 0; h < 2; h++)
                for (int e = 0; e < 4; e++) t[h][e] = _mm256_set_m128i(table[8 * h + 4 + e], table[8 * h + e]);
            for (int64_t c = g * chunks; c < (g + 1) * chunks; c++)
                for (int h = 0; h < 2; h++) {
                    const __m256i bytes = _mm256_loadu_si256((const __m256i *)(tile + c * chunk + 32 * h));
                    const __m256i lo = lookup_rows(t[h], _mm256_and_si256(bytes, low));
                    const __m256i hi = lookup_rows(t[h], _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low));
                    _mm256_storeu_si256((__m256i *)(dst + 2 * c * chunk + 32 * h), lo);
                    _mm256_storeu_si256((__m256i *)(dst + (2 * c + 1) * chunk + 32 * h), hi);
                    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones, lo), _mm256_maddubs_epi16(ones, hi));
                    sums[h] = _mm256_add_epi32(sums[h], _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
                }
        }
        int32_t totals[PANEL];
        _mm256_storeu_si256((__m256i *)totals, sums[0]), _mm256_storeu_si256((__m256i *)(totals + 8), sums[1]);
        for (int64_t r = 0; r < PANEL; r++) colsum[p * PANEL + r] = 128 * totals[r];
    }
}

/* x (M, K) float32 -> xq (M, K4), a scale and a zero point per row */
static void quantize_rows(const float *x, int64_t M, int64_t K, int64_t K4, int8_t *xq, float *scales,
                          int32_t *zeros, const int mode) {
#pragma omp parallel for schedule(static)
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, K, K4, xq + m * K4, scales + m, zeros + m, mode);
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
 * bias (N) or NULL; gelu 1 applies the tanh GELU to the outputs; gate (M, N) or NULL multiplies them
 * by silu(gate) (SwiGLU's up projection; gate may be out itself); narrow (igemm.h): NARROW_BOTH,
 * the weights are in [-63, 63] and the activations may take 7 bits where that is faster (AVX2
 * without VNNI: about 1.8x; VNNI builds keep 8 bits); NARROW_WEIGHTS, the same weights with 8-bit
 * activations (AVX2: about 1.4x WIDE).
 * Returns 0, or -1 without memory for the quantized activations. */
int minicpmv_igemm(const float *x, int64_t M, int64_t K, const int8_t *packed, const float *wscales,
                   const int32_t *colsum, const float *bias, int64_t N, int gelu, const float *gate, int narrow,
                   float *out) {
    const int64_t K4 = round4(K), panels = panels_of(N);
    const int64_t row_tiles = (M + MR - 1) / MR, col_tiles = (panels + STEP - 1) / STEP;
    int8_t *xq = calloc((size_t)(row_tiles * MR * K4), 1); /* padding rows stay zero */
    float *xs = malloc((size_t)M * sizeof(float));
    int32_t *xzeros = malloc((size_t)M * sizeof(int32_t));
    if (!xq || !xs || !xzeros) {
        free(xq), free(xs), free(xzeros);
        return -1;
    }
    const int mode = activation_mode(&narrow);
    quantize_rows(x, M, K, K4, xq, xs, xzeros, mode);
    /* past the caches only what would not stay in them (a vision linear's 1024 x 1152 floats, 4.7 MB) */
    const int stream = (uintptr_t)out % 32 == 0 && N % 8 == 0 && M * N * (int64_t)sizeof(float) >= STREAM_BYTES;
    const igemm_args g = {xq, packed, xs, wscales, bias, xzeros, colsum, M, N, K4, panels, N, gelu, gate, narrow, stream, out};
    /* blocks of BLOCK_TILES row tiles outermost (their quantized rows, 96 x K bytes, stay in L2
     * while every channel panel passes), channel panels within, row tiles innermost (the panel
     * stays in L1/L2 for them): the activations of many crops (10 x 1024 rows) are then read from
     * memory once, not once per panel. Block rb holds tiles [rb T / B, (rb + 1) T / B): sizes
     * within one tile of each other (at most BLOCK_TILES), so that the static schedule's equal
     * shares of (block, panel) pairs are equal work: 128 rows as 24 + 8 tiles gave one of two
     * threads 3x the other's rows (a 128-token prefill at 0.7x the 744-row rate). */
    const int64_t blocks = (row_tiles + BLOCK_TILES - 1) / BLOCK_TILES;
#pragma omp parallel
    {
#pragma omp for schedule(static) collapse(2)
        for (int64_t rb = 0; rb < blocks; rb++)
            for (int64_t ct = 0; ct < col_tiles; ct++)
                for (int64_t rt = rb * row_tiles / blocks; rt < (rb + 1) * row_tiles / blocks; rt++)
                    micro_tile(&g, rt, ct);
        _mm_sfence(); /* each thread's streamed stores visible before the caller reads them */
    }
    free(xq), free(xs), free(xzeros);
    return 0;
}
