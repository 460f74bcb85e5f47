/* The decoder stack for one new token of one sequence, in one native call (Llama / Qwen2 /
 * Qwen3 / MiniCPM layers whose linears all have native kernels; Qwen3.5's are in hybrid.c).
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
 */
#include "layers.h"

typedef struct {
    const float *norm1, *norm2, *q_norm, *k_norm; /* q_norm, k_norm: (head_dim) or NULL */
    linear_desc q, k, v, o, gate, up, down;
    float *keys, *values; /* (kv_heads, max_len, head_dim) */
} layer_desc;

typedef struct {
    int64_t hidden, heads, kv_heads, head_dim, intermediate, max_len;
    double eps, residual_scale;
} stack_shape;

/* q, k, v of one token into the cache at `slot`; returns the status of the linears */
static int project(const stack_shape *s, const layer_desc *l, const float *h, const float *cos, const float *sin,
                   int64_t slot, float *q, float *kv) {
    const int64_t hd = s->head_dim, kvh = s->kv_heads;
    float *k = kv, *v = kv + kvh * hd;
    int status = linear(&l->q, h, q) | linear(&l->k, h, k) | linear(&l->v, h, v);
    for (int64_t head = 0; head < s->heads; head++) {
        if (l->q_norm) rms_norm(q + head * hd, l->q_norm, 0.f, hd, (float)s->eps, q + head * hd);
        rotate(q + head * hd, cos, sin, hd);
    }
    for (int64_t head = 0; head < kvh; head++) {
        if (l->k_norm) rms_norm(k + head * hd, l->k_norm, 0.f, hd, (float)s->eps, k + head * hd);
        rotate(k + head * hd, cos, sin, hd);
    }
    cache_write(l->keys, l->values, k, v, kvh, hd, s->max_len, slot);
    return status;
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
        rms_norm(x, l->norm1, 0.f, D, (float)s->eps, h);
        status |= project(s, l, h, cos, sin, slot, q, kv);
        attend(q, l->keys, l->values, s->heads, s->kv_heads, s->head_dim, s->max_len, slot, attn);
        status |= linear(&l->o, attn, branch);
        axpy(rs, branch, x, D);
        rms_norm(x, l->norm2, 0.f, D, (float)s->eps, h);
        status |= swiglu(&l->gate, &l->up, &l->down, h, gate, up, branch);
        axpy(rs, branch, x, D);
    }
    free(h);
    return status ? -1 : 0;
}
