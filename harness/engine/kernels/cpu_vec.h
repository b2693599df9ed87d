/* Shared by the CPU kernels (cpu_paged_attention.c, cpu_elementwise.c): an 8-float vector
 * type and an exp that the compiler vectorizes. */
#ifndef HARNESS_CPU_VEC_H
#define HARNESS_CPU_VEC_H

#include <math.h>
#include <stdint.h>

/* 8 floats; GCC/Clang vector extensions lower it to AVX (x86-64) or NEON pairs (aarch64).
 * aligned(4): loads from any float address. */
typedef float vec8 __attribute__((vector_size(32), aligned(4)));

static inline vec8 load8(const float *p) { return *(const vec8 *)p; }

/* exp(x): 2^n * p(r), r in [-ln2/2, ln2/2], a degree-6 polynomial (relative error ~2e-7,
 * about 1 ulp). x is clamped to [-87, 88] so that 2^n stays a normal float: exp(-87) ~ 1.6e-38
 * stands for anything smaller, exp(88) ~ 1.7e38 for anything larger. */
static inline float exp_f32(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float n = nearbyintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f; /* ln2 in two parts */
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    return p * two_n.f;
}

#endif
