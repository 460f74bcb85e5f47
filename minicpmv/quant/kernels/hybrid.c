/* Qwen3.5's decoder stack (the LLM of MiniCPM-V 4.6) for one new token of one sequence, in one
 * native call: the same saving as decoder.c's for the gated attention layers and the Gated
 * DeltaNet layers between them, as model/qwen35.py computes them (float32 throughout).
 *
 * Every layer: h = norm1(x) (zero-centred: times 1 + weight, as are q's and k's), a token mixer,
 * x += mixer; x += down(silu(gate(h2)) * up(h2)) with h2 = norm2(x).
 * Gated attention: q_proj gives each head's query and gate side by side; query and key get a
 * per-head zero-centred RMSNorm, then rotary on their first `rotary_dim` dims; the attention
 * output is multiplied by sigmoid(gate) before o_proj.
 * Gated DeltaNet: mixed = in_proj_qkv(h), a causal depthwise conv over the last `conv_kernel`
 * inputs (the cached K - 1 and this one), SiLU; q, k (key heads), v (value heads; value head j
 * reads key head j / (value_heads / key_heads)); q and k L2-normalised, q times dk^-1/2;
 * per value head, with beta = sigmoid(b) and decay e^g, g = -exp(A_log) * softplus(a + dt_bias):
 *   S = e^g S; delta = beta (v - S^T k); S += k delta^T; o = S^T q   (S: dk x dv)
 * then o = norm(o) * silu(z) per head (z = in_proj_z(h)) and out_proj.
 */
#include "layers.h"

typedef struct {
    int64_t recurrent;         /* 1: a DeltaNet layer, 0: gated attention */
    const float *norm1, *norm2; /* zero-centred: the stored weight w, applied as 1 + w */
    linear_desc gate, up, down;
    /* gated attention */
    const float *q_norm, *k_norm; /* zero-centred, (head_dim) */
    linear_desc q, k, v, o;
    float *keys, *values; /* (kv_heads, max_len, head_dim) */
    /* Gated DeltaNet */
    linear_desc qkv, z, b, a, out;
    const float *conv;     /* (channels, conv_kernel) */
    const float *a_log;    /* (value_heads) */
    const float *dt_bias;  /* (value_heads) */
    const float *out_norm; /* (value_head_dim) */
    float *conv_state;     /* the last conv_kernel - 1 inputs, oldest first: (conv_kernel - 1, channels) */
    float *state;          /* (value_heads, key_head_dim, value_head_dim) */
} hybrid_layer;

typedef struct {
    int64_t hidden, intermediate, heads, kv_heads, head_dim, rotary_dim, max_len;
    int64_t key_heads, value_heads, key_dim, value_dim, conv_kernel;
    double eps;
} hybrid_shape;

static inline float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

static inline float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); } /* torch's threshold */

static int gated_attention(const hybrid_shape *s, const hybrid_layer *l, const float *h, const float *cos,
                           const float *sin, int64_t slot, float *scratch, float *out) {
    const int64_t hd = s->head_dim, kvh = s->kv_heads;
    float *qg = scratch, *k = qg + 2 * s->heads * hd, *v = k + kvh * hd, *q = v + kvh * hd, *attn = q + s->heads * hd;
    int status = linear(&l->q, h, qg) | linear(&l->k, h, k) | linear(&l->v, h, v);
    for (int64_t head = 0; head < s->heads; head++) { /* qg: (heads, 2, hd) -> q (heads, hd) */
        rms_norm(qg + 2 * head * hd, l->q_norm, 1.f, hd, (float)s->eps, q + head * hd);
        rotate(q + head * hd, cos, sin, s->rotary_dim);
    }
    for (int64_t head = 0; head < kvh; head++) {
        rms_norm(k + head * hd, l->k_norm, 1.f, hd, (float)s->eps, k + head * hd);
        rotate(k + head * hd, cos, sin, s->rotary_dim);
    }
    cache_write(l->keys, l->values, k, v, kvh, hd, s->max_len, slot);
    attend(q, l->keys, l->values, s->heads, kvh, hd, s->max_len, slot, attn);
    for (int64_t head = 0; head < s->heads; head++) times_sigmoid(attn + head * hd, qg + (2 * head + 1) * hd, hd);
    return status | linear(&l->o, attn, out);
}

/* the causal conv + SiLU of this token's `mixed` (channels), in place; the cached inputs move on */
static void conv_step(const hybrid_shape *s, const hybrid_layer *l, float *mixed, int64_t channels) {
    const int64_t taps = s->conv_kernel, past = taps - 1;
    const __m256i rows = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)taps));
    float *cached = l->conv_state;
    for (int64_t c = 0; c < channels; c += 8) {
        const float *w = l->conv + c * taps; /* 8 channels' taps: one gather per tap */
        const __m256 now = _mm256_loadu_ps(mixed + c);
        __m256 y = _mm256_mul_ps(_mm256_i32gather_ps(w + past, rows, 4), now);
        for (int64_t t = 0; t < past; t++) {
            const __m256 old = _mm256_loadu_ps(cached + t * channels + c);
            y = _mm256_fmadd_ps(_mm256_i32gather_ps(w + t, rows, 4), old, y);
            /* the oldest input drops out, this one comes in */
            _mm256_storeu_ps(cached + t * channels + c, t + 1 < past ? _mm256_loadu_ps(cached + (t + 1) * channels + c) : now);
        }
        _mm256_storeu_ps(mixed + c, y);
    }
    silu(mixed, channels);
}

/* x * (sum x^2 + 1e-6)^-1/2 * scale, in place */
static inline void l2_normalize(float *x, int64_t n, float scale) {
    const float inv = scale / sqrtf(dot(x, x, n) + 1e-6f);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

/* one value head's state update and read: S (dk, dv) */
static void delta_rule(float *S, const float *q, const float *k, const float *v, float decay, float beta, int64_t dk,
                       int64_t dv, float *delta, float *o) {
    memcpy(delta, v, (size_t)dv * sizeof(float));
    for (int64_t i = 0; i < dk; i++) { /* S *= decay; delta = v - S^T k */
        const __m256 d = _mm256_set1_ps(decay), ki = _mm256_set1_ps(-k[i]);
        for (int64_t j = 0; j < dv; j += 8) {
            const __m256 row = _mm256_mul_ps(_mm256_loadu_ps(S + i * dv + j), d);
            _mm256_storeu_ps(S + i * dv + j, row);
            _mm256_storeu_ps(delta + j, _mm256_fmadd_ps(ki, row, _mm256_loadu_ps(delta + j)));
        }
    }
    for (int64_t j = 0; j < dv; j++) delta[j] *= beta;
    memset(o, 0, (size_t)dv * sizeof(float));
    for (int64_t i = 0; i < dk; i++) { /* S += k delta^T; o = S^T q */
        axpy(k[i], delta, S + i * dv, dv);
        axpy(q[i], S + i * dv, o, dv);
    }
}

static int delta_net(const hybrid_shape *s, const hybrid_layer *l, const float *h, float *scratch, float *out) {
    const int64_t dk = s->key_dim, dv = s->value_dim, hk = s->key_heads, hv = s->value_heads;
    const int64_t channels = 2 * hk * dk + hv * dv, groups = hv / hk;
    float *mixed = scratch, *z = mixed + channels, *ba = z + hv * dv, *o = ba + 2 * hv, *deltas = o + hv * dv;
    float *q = mixed, *k = q + hk * dk, *v = k + hk * dk, *beta = ba, *g = ba + hv;
    int status = linear(&l->qkv, h, mixed) | linear(&l->z, h, z) | linear(&l->b, h, beta) | linear(&l->a, h, g);
    conv_step(s, l, mixed, channels);
    for (int64_t head = 0; head < hk; head++) {
        l2_normalize(q + head * dk, dk, 1.f / sqrtf((float)dk));
        l2_normalize(k + head * dk, dk, 1.f);
    }
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < hv; j++) {
        const float decay = expf(-expf(l->a_log[j]) * softplus(g[j] + l->dt_bias[j]));
        delta_rule(l->state + j * dk * dv, q + (j / groups) * dk, k + (j / groups) * dk, v + j * dv, decay,
                   sigmoid(beta[j]), dk, dv, deltas + j * dv, o + j * dv);
    }
    for (int64_t j = 0; j < hv; j++) rms_norm(o + j * dv, l->out_norm, 0.f, dv, (float)s->eps, o + j * dv);
    silu_times(z, o, hv * dv); /* the gated norm: norm(o) * silu(z) */
    return status | linear(&l->out, z, out);
}

/* x (hidden) updated in place through `count` layers; 0, or -1 if out of memory */
int minicpmv_decode_hybrid(const hybrid_layer *layers, int64_t count, const hybrid_shape *s, float *x,
                           const float *cos, const float *sin, int64_t slot) {
    const int64_t D = s->hidden, hd = s->head_dim, hv = s->value_heads, dv = s->value_dim;
    const int64_t attention = 4 * s->heads * hd + 2 * s->kv_heads * hd;
    const int64_t recurrent = 2 * s->key_heads * s->key_dim + 3 * hv * dv + 2 * hv + hv * dv;
    const int64_t mixer = attention > recurrent ? attention : recurrent;
    float *h = malloc((size_t)(2 * D + 2 * s->intermediate + mixer) * sizeof(float));
    if (!h) return -1;
    float *branch = h + D, *gate = branch + D, *up = gate + s->intermediate, *scratch = up + s->intermediate;
    int status = 0;
    for (int64_t n = 0; n < count && !status; n++) {
        const hybrid_layer *l = layers + n;
        rms_norm(x, l->norm1, 1.f, D, (float)s->eps, h);
        status |= l->recurrent ? delta_net(s, l, h, scratch, branch)
                               : gated_attention(s, l, h, cos, sin, slot, scratch, branch);
        axpy(1.f, branch, x, D);
        rms_norm(x, l->norm2, 1.f, D, (float)s->eps, h);
        status |= swiglu(&l->gate, &l->up, &l->down, h, gate, up, branch);
        axpy(1.f, branch, x, D);
    }
    free(h);
    return status ? -1 : 0;
}
