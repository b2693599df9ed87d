/* The elementwise parts of a Llama layer for the CPU, fp32, one pass over each row:
 * RMSNorm with the residual add before it, SwiGLU's silu(gate) * up, rotary embedding.
 * torch runs each as 5-10 ops that each read and write a whole [tokens, width] tensor; in a
 * 2,048-token prefill step those tensors outgrow the caches. References (same contracts):
 * kernels/rms_norm.py, kernels/activation.py, kernels/rope.py; tests/unit/test_cpu_kernels.py.
 * Rows are split over torch's OpenMP threads (see cpu_paged_attention.c).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "cpu_vec.h"

/* Calls smaller than this many floats (a few decode rows) stay on the calling thread. */
#define PARALLEL_MIN 16384

/* out = weight * (s * rsqrt(mean(s^2) + eps)), s = x + residual (stored back into residual),
 * or s = x when residual is NULL. x rows are x_stride apart; residual and out are [n, h]. */
void rms_norm_f32(const float *x, int64_t x_stride, float *residual, const float *weight,
                  float *out, int64_t n, int64_t h, float eps, int num_threads) {
#pragma omp parallel for num_threads(num_threads > 0 ? num_threads : 1) if (n * h >= PARALLEL_MIN)
    for (int64_t row = 0; row < n; row++) {
        const float *xr = x + row * x_stride;
        const float *s = xr; /* the normed row: x, or residual after the add */
        if (residual != NULL) {
            float *restrict r = residual + row * h;
#pragma omp simd
            for (int64_t c = 0; c < h; c++) r[c] = xr[c] + r[c];
            s = r;
        }
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t c = 0; c < h; c++) sum += s[c] * s[c];
        const float rstd = 1.0f / sqrtf(sum / (float)h + eps);
        float *restrict o = out + row * h;
#pragma omp simd
        for (int64_t c = 0; c < h; c++) o[c] = weight[c] * (s[c] * rstd);
    }
}

/* out[n, i] = silu(gate) * up = gate / (1 + exp(-gate)) * up; gate_up rows are
 * [gate (inter) | up (inter)], gu_stride apart; out is [n, inter]. */
void silu_mul_f32(const float *gate_up, int64_t gu_stride, float *out, int64_t n, int64_t inter,
                  int num_threads) {
#pragma omp parallel for num_threads(num_threads > 0 ? num_threads : 1) if (n * inter >= PARALLEL_MIN)
    for (int64_t row = 0; row < n; row++) {
        const float *restrict g = gate_up + row * gu_stride;
        const float *restrict u = g + inter;
        float *restrict o = out + row * inter;
#pragma omp simd
        for (int64_t c = 0; c < inter; c++) o[c] = g[c] / (1.0f + exp_f32(-g[c])) * u[c];
    }
}

/* Rotate-half RoPE in place: x [n, heads, d] (rows tok_stride apart, heads d apart),
 * cos_sin [max_pos, 2, d]. Each product is rounded before the sum, as torch's separate ops
 * round them, so the result is bit-identical to kernels/rope.py's reference: no FMA here. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void rope_f32(float *x, int64_t tok_stride, const int64_t *positions, const float *cos_sin,
              int64_t n, int64_t heads, int64_t d, int num_threads) {
    const int64_t half = d / 2;
#pragma omp parallel for num_threads(num_threads > 0 ? num_threads : 1) if (n * heads * d >= PARALLEL_MIN)
    for (int64_t tok = 0; tok < n; tok++) {
        const float *restrict cos = cos_sin + positions[tok] * 2 * d;
        const float *restrict sin = cos + d;
        for (int64_t hd = 0; hd < heads; hd++) {
            float *restrict lo = x + tok * tok_stride + hd * d;
            float *restrict hi = lo + half;
#pragma omp simd
            for (int64_t c = 0; c < half; c++) {
                const float a1 = lo[c], a2 = hi[c];
                const float p1 = a1 * cos[c], p2 = a2 * sin[c]; /* separate statements: */
                const float p3 = a2 * cos[c + half], p4 = a1 * sin[c + half]; /* no FMA */
                lo[c] = p1 - p2;
                hi[c] = p3 + p4;
            }
        }
    }
}
