/* What the two decode steps share (decoder.c: Llama / Qwen2 / Qwen3 / MiniCPM layers; hybrid.c:
 * Qwen3.5's attention and DeltaNet layers): a quantized linear's descriptor and the float32
 * vector pieces between the linears. Lengths are multiples of 8 (the callers check). */
#ifndef MINICPMV_LAYERS_H
#define MINICPMV_LAYERS_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"
#include "vecmath.h"

static int linear(const linear_desc *l, const float *x, float *out) {
    int status;
    switch (l->kind) {
    case INT4: status = minicpmv_linear_int4(x, 1, l->w, l->scales, l->zeros, l->N, l->K, l->group, out); break;
    case INT4_TILES:
        status = minicpmv_linear_int4_tiles(x, 1, l->w, l->scales, l->zeros, l->N, l->K, l->group, out);
        break;
    case INT8: status = minicpmv_linear_int8(x, 1, l->w, l->scales, l->N, l->K, out); break;
    case INT8_TILES: status = minicpmv_linear_int8_tiles(x, 1, l->w, l->scales, l->N, l->K, out); break;
    default: status = minicpmv_linear_bf16(x, 1, l->w, l->N, l->K, out); break;
    }
    if (l->bias)
        for (int64_t n = 0; n < l->N; n++) out[n] += l->bias[n];
    return status;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    return sum8(acc);
}

/* y += a * x */
static inline void axpy(float a, const float *x, float *y, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
}

/* out = (shift + weight) * x / rms(x): shift 0 for RMSNorm, 1 for Qwen3.5's zero-centred norm */
static inline void rms_norm(const float *x, const float *weight, float shift, int64_t n, float eps, float *out) {
    const __m256 inv = _mm256_set1_ps(1.f / sqrtf(dot(x, x, n) / (float)n + eps)), offset = _mm256_set1_ps(shift);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 w = _mm256_add_ps(offset, _mm256_loadu_ps(weight + i));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(w, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv)));
    }
}

/* rotary on the first `dims` of x: x * cos + roll(x, dims / 2) * signed_sin */
static inline void rotate(float *x, const float *cos, const float *sin, int64_t dims) {
    float rolled[dims];
    for (int64_t i = 0; i < dims; i++) rolled[i] = x[(i + dims / 2) % dims];
    for (int64_t i = 0; i < dims; i++) x[i] = x[i] * cos[i] + rolled[i] * sin[i];
}

/* every head of q (heads, hd) against keys and values 0..slot of its kv head, each (kv_heads,
 * max_len, hd): out (heads, hd) */
static void attend(const float *q, const float *keys, const float *values, int64_t heads, int64_t kv_heads,
                   int64_t hd, int64_t max_len, int64_t slot, float *out) {
    const int64_t group = heads / kv_heads, length = slot + 1;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < heads; h++) {
        const float *kh = keys + (h / group) * max_len * hd, *vh = values + (h / group) * max_len * hd;
        float *scores = malloc((size_t)length * sizeof(float)), top = -INFINITY, total = 0.f;
        float *oh = out + h * hd;
        if (!scores) abort(); /* a few KB */
        for (int64_t j = 0; j < length; j++) {
            scores[j] = dot(q + h * hd, kh + j * hd, hd) * scale;
            top = scores[j] > top ? scores[j] : top;
        }
        for (int64_t j = 0; j < length; j++) total += scores[j] = expf(scores[j] - top);
        memset(oh, 0, (size_t)hd * sizeof(float));
        for (int64_t j = 0; j < length; j++) axpy(scores[j] / total, vh + j * hd, oh, hd);
        free(scores);
    }
}

/* k and v of one token (kv_heads, hd) each written at `slot` of a (kv_heads, max_len, hd) cache */
static inline void cache_write(float *keys, float *values, const float *k, const float *v, int64_t kv_heads,
                               int64_t hd, int64_t max_len, int64_t slot) {
    for (int64_t head = 0; head < kv_heads; head++) {
        memcpy(keys + (head * max_len + slot) * hd, k + head * hd, (size_t)hd * sizeof(float));
        memcpy(values + (head * max_len + slot) * hd, v + head * hd, (size_t)hd * sizeof(float));
    }
}

/* gate = silu(gate) * up */
static inline void silu_times(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(silu8(_mm256_loadu_ps(gate + i)), _mm256_loadu_ps(up + i)));
}

/* x = silu(x) */
static inline void silu(float *x, int64_t n) {
    for (int64_t i = 0; i < n; i += 8) _mm256_storeu_ps(x + i, silu8(_mm256_loadu_ps(x + i)));
}

/* x *= sigmoid(gate) */
static inline void times_sigmoid(float *x, const float *gate, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(zero, _mm256_loadu_ps(gate + i)));
        _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), _mm256_add_ps(one, e)));
    }
}

/* the SwiGLU MLP's branch: out = down(silu(gate(h)) * up(h)); gate and up (intermediate) scratch */
static inline int swiglu(const linear_desc *gate_proj, const linear_desc *up_proj, const linear_desc *down_proj,
                         const float *h, float *gate, float *up, float *out) {
    int status = linear(gate_proj, h, gate) | linear(up_proj, h, up);
    silu_times(gate, up, gate_proj->N);
    return status | linear(down_proj, gate, out);
}
#endif
