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
 * 4.7's mixture of experts in place of the dense MLP: p = softmax(router h); the top_k experts'
 * p renormalised to sum to 1 weigh their SwiGLU outputs, summed in expert order (the model's
 * order: rounding follows it), plus the shared expert's output times sigmoid(shared_gate . h).
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
    /* mixture of experts (shape experts > 0): gate, up and down above are the shared expert */
    const float *router;         /* (experts, hidden) */
    const float *shared_gate;    /* (hidden) */
    const linear_desc *expert;   /* (experts, 3): each expert's gate, up, down */
} hybrid_layer;

typedef struct {
    int64_t hidden, mlp_width, heads, kv_heads, head_dim, rotary_dim, max_len; /* mlp_width: the widest MLP */
    int64_t key_heads, value_heads, key_dim, value_dim, conv_kernel;
    int64_t experts, top_k; /* 0, 0: dense MLPs */
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

/* the chosen experts (ascending) and their weights; p (experts): the router's logits, softmaxed in place */
static void route(const hybrid_shape *s, const hybrid_layer *l, const float *h, float *p, int64_t *chosen,
                  float *weight) {
    const int64_t E = s->experts, D = s->hidden;
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < E; e++) p[e] = dot(l->router + e * D, h, D);
    float top = -INFINITY, total = 0.f, picked = 0.f;
    for (int64_t e = 0; e < E; e++) top = p[e] > top ? p[e] : top;
    for (int64_t e = 0; e < E; e++) total += p[e] = expf(p[e] - top);
    for (int64_t e = 0; e < E; e++) p[e] /= total;
    int64_t count = 0;
    for (int64_t k = 0; k < s->top_k; k++) { /* the k-th largest; equal values: the lower index */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++) {
            int taken = 0;
            for (int64_t j = 0; j < count; j++) taken |= chosen[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        chosen[count++] = best;
        picked += p[best];
    }
    for (int64_t i = 1; i < count; i++) /* ascending expert ids: the model adds them in that order */
        for (int64_t j = i; j > 0 && chosen[j] < chosen[j - 1]; j--) {
            const int64_t t = chosen[j];
            chosen[j] = chosen[j - 1];
            chosen[j - 1] = t;
        }
    for (int64_t i = 0; i < count; i++) weight[i] = p[chosen[i]] / picked;
}

static inline tile_product tiled(const linear_desc *l, const float *x, float *out) {
    return (tile_product){x, l->w, l->scales, l->zeros, l->N, l->K, l->group, out};
}

/* the SwiGLU branches of `count` MLPs (each its gate, up, down) on one input h: out (count, D),
 * gate and up (count, width) scratch. Tiled int4 linears go in two batches (gates and ups, then
 * downs): two forks a layer instead of three per MLP */
static int swiglus(const linear_desc *const *mlp, int64_t count, const float *h, int64_t width, float *gate,
                   float *up, float *out) {
    const int64_t D = mlp[0][2].N;
    int tiled_only = 1, status = 0;
    for (int64_t i = 0; i < count; i++)
        for (int j = 0; j < 3; j++) tiled_only &= mlp[i][j].kind == INT4_TILES && !mlp[i][j].bias;
    if (!tiled_only) {
        for (int64_t i = 0; i < count; i++)
            status |= swiglu(mlp[i], mlp[i] + 1, mlp[i] + 2, h, gate + i * width, up + i * width, out + i * D);
        return status;
    }
    tile_product products[2 * count];
    for (int64_t i = 0; i < count; i++) {
        products[2 * i] = tiled(mlp[i], h, gate + i * width);
        products[2 * i + 1] = tiled(mlp[i] + 1, h, up + i * width);
    }
    status = minicpmv_int4_tiles_batch(products, 2 * count);
    for (int64_t i = 0; i < count; i++) {
        silu_times(gate + i * width, up + i * width, mlp[i][0].N);
        products[i] = tiled(mlp[i] + 2, gate + i * width, out + i * D);
    }
    return status | minicpmv_int4_tiles_batch(products, count);
}

/* the MLP branch of a mixture-of-experts layer; gate, up ((top_k + 1), mlp_width), scratch
 * (experts + (top_k + 1) hidden) */
static int experts(const hybrid_shape *s, const hybrid_layer *l, const float *h, float *gate, float *up,
                   float *scratch, float *out) {
    const int64_t D = s->hidden, k = s->top_k;
    float *p = scratch, *branch = p + s->experts, weight[k + 1]; /* branch: (k + 1, D), the shared one last */
    const linear_desc shared[3] = {l->gate, l->up, l->down}, *mlp[k + 1];
    int64_t chosen[k];
    route(s, l, h, p, chosen, weight);
    for (int64_t i = 0; i < k; i++) mlp[i] = l->expert + 3 * chosen[i];
    mlp[k] = shared;
    weight[k] = sigmoid(dot(l->shared_gate, h, D));
    const int status = swiglus(mlp, k + 1, h, s->mlp_width, gate, up, branch);
    memset(out, 0, (size_t)D * sizeof(float));
    for (int64_t i = 0; i <= k; i++) /* the model's order: the experts' sum, then the shared expert */
        for (int64_t j = 0; j < D; j++) out[j] += branch[i * D + j] * weight[i];
    return status;
}

/* x (hidden) updated in place through `count` layers; 0, or -1 if out of memory */
int minicpmv_decode_hybrid(const hybrid_layer *layers, int64_t count, const hybrid_shape *s, float *x,
                           const float *cos, const float *sin, int64_t slot) {
    const int64_t D = s->hidden, hd = s->head_dim, hv = s->value_heads, dv = s->value_dim;
    const int64_t attention = 4 * s->heads * hd + 2 * s->kv_heads * hd;
    const int64_t recurrent = 2 * s->key_heads * s->key_dim + 3 * hv * dv + 2 * hv + hv * dv;
    const int64_t mlps = s->top_k + 1; /* a dense MLP, or the chosen experts and the shared one */
    const int64_t mixer = attention > recurrent ? attention : recurrent, moe = s->experts + mlps * D;
    const int64_t scratch_size = mixer > moe ? mixer : moe; /* the mixer's scratch, later the experts' */
    float *h = malloc((size_t)(2 * D + 2 * mlps * s->mlp_width + scratch_size) * sizeof(float));
    if (!h) return -1;
    float *branch = h + D, *gate = branch + D, *up = gate + mlps * s->mlp_width, *scratch = up + mlps * s->mlp_width;
    int status = 0;
    for (int64_t n = 0; n < count && !status; n++) {
        const hybrid_layer *l = layers + n;
        rms_norm(x, l->norm1, 1.f, D, (float)s->eps, h);
        status |= l->recurrent ? delta_net(s, l, h, scratch, branch)
                               : gated_attention(s, l, h, cos, sin, slot, scratch, branch);
        axpy(1.f, branch, x, D);
        rms_norm(x, l->norm2, 1.f, D, (float)s->eps, h);
        status |= s->experts ? experts(s, l, h, gate, up, scratch, branch)
                             : swiglu(&l->gate, &l->up, &l->down, h, gate, up, branch);
        axpy(1.f, branch, x, D);
    }
    free(h);
    return status ? -1 : 0;
}
