/* The decoder stack for one new token of one sequence, in one native call (Llama / Qwen2 /
 * Qwen3 / MiniCPM layers whose linears all have native kernels).
 *
 * Why: with ~200 native linears per token, the weights stream at the machine's bandwidth, but the
 * torch ops between them (norms, rotary, cache writes, attention, residual adds: ~12 per layer)
 * and the module calls cost ~10 ms a token on Qwen2-1.5B, a quarter of the step. Here they are
 * a few microseconds each.
 *
 * Per layer, as model/llm.py computes it (float32 throughout):
 *   h = norm1(x); q, k, v = proj(h) (+ bias); [per-head RMSNorm of q and k]; rotary on q and k;
 *   k, v written at `slot` of the layer's cache; attention of each head over slots 0..slot;
 *   x += residual_scale * o_proj(attention); x += residual_scale * down(silu(gate(h2)) * up(h2))
 *   with h2 = norm2(x).
 * Rotary: x * cos + roll(x, hd / 2) * signed_sin, with cos and signed sin given (head_dim each).
 * Vectors of 8: hidden, head_dim and intermediate sizes are multiples of 8 (the caller checks).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qgemm.h"
#include "vecmath.h"

enum linear_kind { INT4 = 0, INT4_TILES = 1, INT8 = 2, BF16 = 3, INT8_TILES = 4 };

typedef struct {
    int64_t kind;
    const void *w, *scales, *zeros; /* zeros: int4 only; scales: none for bf16 */
    const float *bias;              /* or NULL */
    int64_t N, K, group;
} linear_desc;

typedef struct {
    const float *norm1, *norm2, *q_norm, *k_norm; /* q_norm, k_norm: (head_dim) or NULL */
    linear_desc q, k, v, o, gate, up, down;
    float *keys, *values; /* (kv_heads, max_len, head_dim) */
} layer_desc;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, intermediate, max_len;
    double eps, residual_scale;
} stack_shape;

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

static void rms_norm(const float *x, const float *weight, int64_t n, float eps, float *out) {
    const __m256 inv = _mm256_set1_ps(1.f / sqrtf(dot(x, x, n) / (float)n + eps));
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), inv)));
}

static void rotate(float *x, const float *cos, const float *sin, int64_t hd) {
    float rolled[hd];
    for (int64_t i = 0; i < hd; i++) rolled[i] = x[(i + hd / 2) % hd];
    for (int64_t i = 0; i < hd; i++) x[i] = x[i] * cos[i] + rolled[i] * sin[i];
}

/* every head of q against keys and values 0..slot of its kv head: out (heads, hd) */
static void attend(const stack_shape *s, const float *q, const float *keys, const float *values, int64_t slot,
                   float *out) {
    const int64_t hd = s->head_dim, group = s->heads / s->kv_heads, length = slot + 1;
    const float scale = 1.f / sqrtf((float)hd);
#pragma omp parallel for schedule(static)
    for (int64_t h = 0; h < s->heads; h++) {
        const float *kh = keys + (h / group) * s->max_len * hd, *vh = values + (h / group) * s->max_len * hd;
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

/* q, k, v of one token into the cache at `slot`; returns the status of the linears */
static int project(const stack_shape *s, const layer_desc *l, const float *h, const float *cos, const float *sin,
                   int64_t slot, float *q, float *kv) {
    const int64_t hd = s->head_dim, kvh = s->kv_heads;
    float *k = kv, *v = kv + kvh * hd;
    int status = linear(&l->q, h, q) | linear(&l->k, h, k) | linear(&l->v, h, v);
    for (int64_t head = 0; head < s->heads; head++) {
        if (l->q_norm) rms_norm(q + head * hd, l->q_norm, hd, (float)s->eps, q + head * hd);
        rotate(q + head * hd, cos, sin, hd);
    }
    for (int64_t head = 0; head < kvh; head++) {
        if (l->k_norm) rms_norm(k + head * hd, l->k_norm, hd, (float)s->eps, k + head * hd);
        rotate(k + head * hd, cos, sin, hd);
        memcpy(l->keys + (head * s->max_len + slot) * hd, k + head * hd, (size_t)hd * sizeof(float));
        memcpy(l->values + (head * s->max_len + slot) * hd, v + head * hd, (size_t)hd * sizeof(float));
    }
    return status;
}

/* gate = silu(gate) * up = gate * up / (1 + e^-gate) */
static void silu_times(float *gate, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.f), zero = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_sub_ps(zero, g));
        _mm256_storeu_ps(gate + i, _mm256_div_ps(_mm256_mul_ps(g, _mm256_loadu_ps(up + i)), _mm256_add_ps(one, e)));
    }
}

/* x (hidden) updated in place through `count` layers; 0, or -1 if out of memory */
int minicpmv_decode_layers(const layer_desc *layers, int64_t count, const stack_shape *s, float *x, const float *cos,
                           const float *sin, int64_t slot) {
    const int64_t D = s->hidden, H = s->heads * s->head_dim, I = s->intermediate;
    const float rs = (float)s->residual_scale;
    float *h = malloc((size_t)(D + 2 * H + 2 * s->kv_heads * s->head_dim + 2 * I + D) * sizeof(float));
    if (!h) return -1;
    float *q = h + D, *attn = q + H, *kv = attn + H, *gate = kv + 2 * s->kv_heads * s->head_dim, *up = gate + I;
    float *branch = up + I;
    int status = 0;
    for (int64_t n = 0; n < count && !status; n++) {
        const layer_desc *l = layers + n;
        rms_norm(x, l->norm1, D, (float)s->eps, h);
        status |= project(s, l, h, cos, sin, slot, q, kv);
        attend(s, q, l->keys, l->values, slot, attn);
        status |= linear(&l->o, attn, branch);
        axpy(rs, branch, x, D);
        rms_norm(x, l->norm2, D, (float)s->eps, h);
        status |= linear(&l->gate, h, gate) | linear(&l->up, h, up);
        silu_times(gate, up, I);
        status |= linear(&l->down, gate, branch);
        axpy(rs, branch, x, D);
    }
    free(h);
    return status ? -1 : 0;
}
