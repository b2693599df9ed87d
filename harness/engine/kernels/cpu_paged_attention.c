/* Paged decode attention for the CPU, fp32: each query row attends to its request's cached
 * keys in place, block by block, so the K/V blocks are read once and never gathered; and the
 * cache write of each step's K/V rows.
 *
 * Layout (harness/engine/model/attention.py): k_cache, v_cache [Hkv, num_blocks, bs, D];
 * q rows [B, H, D] with a row stride (a view of the fused qkv output); out [B, H * D].
 * Work item = (row, kv head): its G = H / Hkv query heads share every key read. Items are
 * handed out last row first to OpenMP threads; the caller sorts rows by context length
 * ascending, so the longest start first and the load balances. Built with -fopenmp, the
 * library binds to the libgomp that torch has already loaded (same soname), so it runs on
 * torch's own thread pool: a second pool would fight torch's spinning threads for the cores.
 * Softmax is exact (max, exp, sum, divide), as the plain-torch reference computes it.
 * Built by cpu_build.py with -O3 -march=native -fopenmp.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_vec.h"

typedef struct {
    const float *q;
    int64_t q_row_stride;
    const float *k_cache;
    const float *v_cache;
    const int64_t *block_tables; /* [B, max_blocks] */
    const int64_t *context_lens; /* [B] */
    float *out;
    int64_t num_rows, num_heads, num_kv_heads, head_dim, num_blocks, block_size, max_blocks;
    float scale;
} Job;

/* [sum(v[0]), ..., sum(v[7])]: a transpose-and-add tree, 7 adds for 8 dot products */
static inline vec8 sum8x8(const vec8 v[8]) {
    vec8 h[4], q[2];
    for (int i = 0; i < 4; i++)
        h[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; i++)
        q[i] = __builtin_shufflevector(h[2 * i], h[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(h[2 * i], h[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(q[0], q[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(q[0], q[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

static inline float sum8(vec8 v) {
    float s = 0.0f;
    for (int i = 0; i < 8; i++) s += v[i];
    return s;
}

/* scores[t] = scale * q . k_t for the n keys of one block (k: [n, d]) */
static inline __attribute__((always_inline)) void block_scores(
    const float *restrict q, const float *restrict k, int64_t n, const int64_t d, float scale,
    float *restrict scores) {
    int64_t t = 0;
    for (; t + 8 <= n; t += 8) { /* 8 keys: their partial sums reduce together */
        vec8 part[8];
        for (int u = 0; u < 8; u++) {
            const float *kt = k + (t + u) * d;
            vec8 acc = load8(q) * load8(kt);
            for (int64_t c = 8; c < d; c += 8) acc += load8(q + c) * load8(kt + c);
            part[u] = acc;
        }
        const vec8 s = sum8x8(part) * scale;
        for (int u = 0; u < 8; u++) scores[t + u] = s[u];
    }
    for (; t < n; t++) {
        vec8 acc = load8(q) * load8(k + t * d);
        for (int64_t c = 8; c < d; c += 8) acc += load8(q + c) * load8(k + t * d + c);
        scores[t] = sum8(acc) * scale;
    }
}

/* One work item. Inlined with a constant head_dim (64, 128) the loops over d unroll and the
 * output accumulator stays in registers; other multiples of 8 take the generic copy. */
static inline __attribute__((always_inline)) void attend_item_dim(
    const Job *job, int64_t row, int64_t kv_head, float *restrict scores, const int64_t d) {
    const int64_t bs = job->block_size;
    const int64_t group = job->num_heads / job->num_kv_heads;
    const int64_t len = job->context_lens[row];
    const int64_t *table = job->block_tables + row * job->max_blocks;
    const float *q = job->q + row * job->q_row_stride + kv_head * group * d; /* [G, D] */
    float *out = job->out + (row * job->num_heads + kv_head * group) * d;    /* [G, D] */
    const float *k_head = job->k_cache + kv_head * job->num_blocks * bs * d;
    const float *v_head = job->v_cache + kv_head * job->num_blocks * bs * d;
    const int64_t num_blocks = (len + bs - 1) / bs;

    /* scores[g * len + t] (software prefetch of the next block measured slower) */
    for (int64_t j = 0; j < num_blocks; j++) {
        const float *k = k_head + table[j] * bs * d;
        const int64_t n = len - j * bs < bs ? len - j * bs : bs;
        for (int64_t g = 0; g < group; g++)
            block_scores(q + g * d, k, n, d, job->scale, scores + g * len + j * bs);
    }
    /* softmax per query head, normalised before the weighted sum */
    for (int64_t g = 0; g < group; g++) {
        float *restrict s = scores + g * len;
        float m = s[0];
        for (int64_t t = 1; t < len; t++) m = s[t] > m ? s[t] : m;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < len; t++) {
            s[t] = exp_f32(s[t] - m);
            sum += s[t];
        }
        const float inv_sum = 1.0f / sum;
#pragma omp simd
        for (int64_t t = 0; t < len; t++) s[t] *= inv_sum;
    }
    /* out_g = sum_t p_g[t] v_t, one query head at a time: its accumulator stays in registers
     * and the item's V blocks stay in cache for the next head */
    for (int64_t g = 0; g < group; g++) {
        const float *restrict p = scores + g * len;
        vec8 acc[d / 8];
        for (int64_t c = 0; c < d / 8; c++) acc[c] = (vec8){0};
        for (int64_t j = 0; j < num_blocks; j++) {
            const float *restrict v = v_head + table[j] * bs * d;
            const int64_t n = len - j * bs < bs ? len - j * bs : bs;
            for (int64_t t = 0; t < n; t++) {
                const float pt = p[j * bs + t];
                for (int64_t c = 0; c < d / 8; c++) acc[c] += pt * load8(v + t * d + 8 * c);
            }
        }
        for (int64_t c = 0; c < d / 8; c++) *(vec8 *)(out + g * d + 8 * c) = acc[c];
    }
}

static void attend_item(const Job *job, int64_t row, int64_t kv_head, float *scores) {
    switch (job->head_dim) {
        case 64: attend_item_dim(job, row, kv_head, scores, 64); break;
        case 128: attend_item_dim(job, row, kv_head, scores, 128); break;
        default: attend_item_dim(job, row, kv_head, scores, job->head_dim);
    }
}

/* Returns 0 on success, 1 when scratch memory could not be had, 2 for bad arguments
 * (head_dim must be a multiple of 8, num_heads a multiple of num_kv_heads). */
int paged_decode_f32(const float *q, int64_t q_row_stride, const float *k_cache,
                     const float *v_cache, const int64_t *block_tables,
                     const int64_t *context_lens, float *out,
                     int64_t num_rows, int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                     int64_t num_blocks, int64_t block_size, int64_t max_blocks, float scale,
                     int num_threads) {
    if (num_kv_heads <= 0 || num_heads % num_kv_heads || head_dim % 8) return 2;
    const Job job = {q, q_row_stride, k_cache, v_cache, block_tables, context_lens, out,
                     num_rows, num_heads, num_kv_heads, head_dim, num_blocks, block_size,
                     max_blocks, scale};
    const int64_t num_items = num_rows * num_kv_heads;
    const size_t scratch = (size_t)(num_heads / num_kv_heads) * max_blocks * block_size;
    int status = 0;
#pragma omp parallel num_threads(num_threads > 0 ? num_threads : 1) reduction(| : status)
    {
        float *scores = malloc(scratch * sizeof(float));
        status = scores == NULL;
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < num_items; item++) {
            if (scores == NULL) continue;
            const int64_t row = num_rows - 1 - item / num_kv_heads; /* longest rows first */
            attend_item(&job, row, item % num_kv_heads, scores);
        }
        free(scores);
    }
    return status;
}

/* This step's K and V rows into their cache slots: cache[h, slot_mapping[n]] = row[n, h].
 * k, v [N, Hkv, D] with row strides (views of the fused qkv output); caches viewed as
 * [Hkv, num_slots, D]. A plain copy, so it is exact; one thread is enough (N * Hkv rows). */
void write_kv_f32(const float *k, int64_t k_row_stride, const float *v, int64_t v_row_stride,
                  float *k_cache, float *v_cache, const int64_t *slot_mapping,
                  int64_t num_tokens, int64_t num_kv_heads, int64_t head_dim, int64_t num_slots) {
    const size_t row_bytes = (size_t)head_dim * sizeof(float);
    for (int64_t n = 0; n < num_tokens; n++) {
        const int64_t slot = slot_mapping[n];
        for (int64_t h = 0; h < num_kv_heads; h++) {
            const int64_t dst = (h * num_slots + slot) * head_dim;
            memcpy(k_cache + dst, k + n * k_row_stride + h * head_dim, row_bytes);
            memcpy(v_cache + dst, v + n * v_row_stride + h * head_dim, row_bytes);
        }
    }
}
