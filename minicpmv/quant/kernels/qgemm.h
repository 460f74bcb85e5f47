/* What the kernel files share: the decoding products' entry points (qgemm.c, tiles.c), called
 * from Python and from the decode steps (decoder.c, hybrid.c), the int8 activations they quantize
 * and the descriptor of a quantized linear. */
#ifndef MINICPMV_QGEMM_H
#define MINICPMV_QGEMM_H
#include <stdint.h>

/* x (M, K) quantized to int8 in blocks: q (M, K), and per block the scale, the sum of x and
 * scale * sum(q) (M, K / block each) */
typedef struct { int8_t *q; float *scales, *sums, *qsums; } act_buffers;

/* fills b (freed with minicpmv_free_activations); `run` as quantize_rows in qgemm.c. 0, or -1 if
 * out of memory */
int minicpmv_quantize_activations(act_buffers *b, const float *x, int64_t M, int64_t K, int64_t block, int run);
void minicpmv_free_activations(act_buffers *b);

int minicpmv_linear_int4(const float *x, int64_t M, const uint8_t *w, const uint16_t *scales, const uint16_t *zeros,
                         int64_t N, int64_t K, int64_t group, float *out);
int minicpmv_linear_int4_tiles(const float *x, int64_t M, const uint8_t *w, const uint16_t *scales,
                               const uint16_t *zeros, int64_t N, int64_t K, int64_t group, float *out);
/* one token through one tiled int4 linear, as a part of minicpmv_int4_tiles_batch */
typedef struct {
    const float *x;
    const uint8_t *w;
    const uint16_t *scales, *zeros;
    int64_t N, K, group;
    float *out;
} tile_product;
int minicpmv_int4_tiles_batch(const tile_product *products, int64_t count);

/* a quantized linear, as the decode steps and the experts of a prompt read it */
enum linear_kind { INT4 = 0, INT4_TILES = 1, INT8 = 2, BF16 = 3, INT8_TILES = 4 };

typedef struct {
    int64_t kind;
    const void *w, *scales, *zeros; /* zeros: int4 only; scales: none for bf16 */
    const float *bias;              /* or NULL */
    int64_t N, K, group;
} linear_desc;

/* a prompt's rows through their routed experts' SwiGLUs (tiles.c) */
int minicpmv_int4_experts(const linear_desc *table, int64_t experts, const int64_t *counts, int64_t below,
                          const float *x, float *gate, float *up, float *out);

int minicpmv_linear_int8(const float *x, int64_t M, const int8_t *w, const float *wscales, int64_t N, int64_t K,
                         float *out);
int minicpmv_linear_int8_tiles(const float *x, int64_t M, const uint8_t *w, const float *wscales, int64_t N,
                               int64_t K, float *out);
int minicpmv_linear_bf16(const float *x, int64_t M, const uint16_t *w, int64_t N, int64_t K, float *out);
#endif
