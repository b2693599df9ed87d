// 2:4-sparse FP8 weights on the sparse tensor cores (mma.sp), for the decode regime:
// out[T, N] += X[T, K] . W[N, K]^T with T up to a few hundred rows.
//
// Triton emits no sparse MMA, so its 2:4 kernel (sparse24_gemm.py) expands the weights and
// multiplies them densely. Here W is the sparse A operand (16 output rows a tile: "swap AB")
// and X the B operand (8 tokens a tile). On sm_90 the FP8 form of warp-level mma.sp
// (m16n8k64 e4m3) compiles to two f16 HMMA.SP.16832 and byte-unpacking of both operands
// (the SASS, read with cuobjdump); so this kernel unpacks only the weights (e4m3 -> f16, exact)
// and runs the f16 form, m16n8k32, on X in f16: the weights stay 62.5% of dense FP8's bytes.
//
// W comes packed by sparse24_mma.py (pack_for_mma): for every 16-row x 64-input tile (two
// mma.sp of 32 inputs), lane l reads its A registers for both as one 16-byte word of e4m3
// values and their metadata as one 32-bit word (selector 0 for the first 32 inputs, threads
// 0-1 of each quad; selector 1 for the next, threads 2-3), so a warp's loads of a tile are
// 512 + 128 contiguous bytes. X tiles go through shared memory (cp.async, double-buffered),
// shared by the 8 warps of a block (128 output rows), and reach the B registers by ldmatrix.
//
// Three forms: _t16 and _t32 (16 / 32 tokens a block, 4 steps of weights in flight a warp:
// few tokens, where the weights' streaming is all) and _t64 (64 tokens, 2 steps). Grid:
// (ceil(T / tokens), ceil(N / 128), splits): the blocks of one weight tile's token blocks are
// neighbours, so they run together and read it once from memory, then from L2. With one split,
// each output is written once, times its token's and row's scales, as fp32, bf16 or f16
// (out_kind 0, 1, 2); with more, each split writes its fp32 partial sums, and
// sparse24_mma_reduce adds, scales and casts them. sparse24_mma_x_to_f16 makes the f16 X (from
// e4m3 or bf16). N % 16 == 0, K % 64 == 0, X rows 16-byte aligned.
//
// sparse24_mma_expand writes the packed weight back as the dense [N, K] e4m3 matrix (for
// steps large enough for the dense GEMM); mma_sp_f16_probe runs one mma.sp on registers given
// per lane: the GPU test checks the layouts pack_for_mma assumes against it (and
// e4m3x2_probe the unpacking's byte order).
//
// At the end, for Hopper only (sm_90a; a trap elsewhere): sparse24_wgmma_gemm_* (its forms:
// WGMMA_FORM), the same product with e4m3 X on wgmma.mma_async.sp, FP8 at the sparse tensor
// cores' own rate (sparse24_wgmma.py), and wgmma_sp_e4m3_probe, one such instruction for the
// layout test.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace {

constexpr int kWarps = 8;  // output-row tiles of 16 per block

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  int src_bytes = valid ? 16 : 0;  // 0: fill with zeros (tokens past T, inputs past K)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem),
               "r"(src_bytes));
}

// Two e4m3 (low byte first) -> f16x2 (low half first).
__device__ __forceinline__ uint32_t e4m3x2_to_f16x2(uint32_t two) {
  uint32_t out;
  asm("{\n .reg .b16 lo;\n mov.b32 {lo, _}, %1;\n cvt.rn.f16x2.e4m3x2 %0, lo;\n}\n"
      : "=r"(out)
      : "r"(two));
  return out;
}

template <int kSelector>
__device__ __forceinline__ void mma_sp(float (&c)[4], const uint32_t (&a)[4],
                                       const uint32_t (&b)[4], uint32_t meta) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, %13;\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
        "r"(b[3]), "r"(meta), "n"(kSelector));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// A registers of the two mma.sp of a 64-input step from the lane's 16 packed e4m3 bytes.
__device__ __forceinline__ void unpack_a(const uint4& v, uint32_t (&a0)[4], uint32_t (&a1)[4]) {
  a0[0] = e4m3x2_to_f16x2(v.x);
  a0[1] = e4m3x2_to_f16x2(v.x >> 16);
  a0[2] = e4m3x2_to_f16x2(v.y);
  a0[3] = e4m3x2_to_f16x2(v.y >> 16);
  a1[0] = e4m3x2_to_f16x2(v.z);
  a1[1] = e4m3x2_to_f16x2(v.z >> 16);
  a1[2] = e4m3x2_to_f16x2(v.w);
  a1[3] = e4m3x2_to_f16x2(v.w >> 16);
}

}  // namespace

// out[at] = v as fp32, bf16 or f16 (out_kind 0, 1, 2).
__device__ __forceinline__ void store(void* out, int out_kind, int64_t at, float v) {
  if (out_kind == 1) {
    static_cast<__nv_bfloat16*>(out)[at] = __float2bfloat16(v);
  } else if (out_kind == 2) {
    static_cast<__half*>(out)[at] = __float2half(v);
  } else {
    static_cast<float*>(out)[at] = v;
  }
}

// kTokens tokens a block (8 a tile); kStepsPerStage 64-input steps a shared-memory stage, and
// the depth of the weights' prefetch into registers (loads in flight: the decode regime is
// memory-bound).
template <int kTokens, int kStepsPerStage>
__device__ __forceinline__ void gemm(const uint4* __restrict__ w_vals,     // [N/16][K/64][32]
                                     const uint32_t* __restrict__ w_meta,  // [N/16][K/64][32]
                                     const uint16_t* __restrict__ x,       // [T][ldx] f16
                                     const float* __restrict__ x_scale,    // [T] (one split)
                                     const float* __restrict__ w_scale,    // [N] (one split)
                                     void* __restrict__ out,  // [T][N]: out_kind, or fp32 sums
                                     int out_kind, int T, int N, int K, int ldx,
                                     int steps_per_split) {
  constexpr int kStageBytes = 64 * 2 * kStepsPerStage;  // one token's f16 inputs a stage
  constexpr int kRowStride = kStageBytes + 16;          // ldmatrix's 8 rows on 8 bank groups
  __shared__ __align__(128) uint8_t xs[2][kTokens * kRowStride];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int tile = blockIdx.y * kWarps + warp;  // this warp's 16 output rows
  const bool has_rows = tile * 16 < N;
  const int tok0 = blockIdx.x * kTokens;
  const int ksteps = K / 64;
  const int step0 = blockIdx.z * steps_per_split;
  const int step1 = min(step0 + steps_per_split, ksteps);
  if (step0 >= step1) return;  // uniform over the block
  const int stages = (step1 - step0 + kStepsPerStage - 1) / kStepsPerStage;
  const int tokens_here = min(kTokens, T - tok0);

  // One stage: kTokens rows x kStageBytes of X in 16-byte chunks over the block's threads.
  auto load_stage = [&](int stage, int buf) {
    const int k0 = (step0 + stage * kStepsPerStage) * 64;  // in f16 elements
    constexpr int chunks_per_row = kStageBytes / 16;
    for (int c = threadIdx.x; c < kTokens * chunks_per_row; c += kWarps * 32) {
      const int row = c / chunks_per_row, col = (c % chunks_per_row) * 8;  // f16 elements
      const bool valid = row < tokens_here && k0 + col < step1 * 64;
      const uint16_t* src = valid ? x + static_cast<int64_t>(tok0 + row) * ldx + k0 + col : x;
      cp_async16(&xs[buf][row * kRowStride + col * 2], src, valid);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };

  float acc[kTokens / 8][4] = {};
  const int64_t tile_base = static_cast<int64_t>(tile) * ksteps * 32 + lane;
  uint4 v_cur[kStepsPerStage], v_next[kStepsPerStage];
  uint32_t m_cur[kStepsPerStage], m_next[kStepsPerStage];
  auto load_a = [&](int stage, uint4 (&v)[kStepsPerStage], uint32_t (&m)[kStepsPerStage]) {
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
      const int step = step0 + stage * kStepsPerStage + j;
      if (has_rows && step < step1) {
        v[j] = w_vals[tile_base + static_cast<int64_t>(step) * 32];
        m[j] = w_meta[tile_base + static_cast<int64_t>(step) * 32];
      }
    }
  };

  // ldmatrix: lanes 8i..8i+7 address rows 0-7 of matrix i, inputs 8i..8i+7 of 32.
  const int lm_row = lane % 8, lm_col = (lane / 8) * 8;
  load_stage(0, 0);
  load_a(0, v_cur, m_cur);
  for (int s = 0; s < stages; ++s) {
    const int buf = s & 1;
    if (s + 1 < stages) {
      load_stage(s + 1, buf ^ 1);
      load_a(s + 1, v_next, m_next);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    if (has_rows) {
#pragma unroll
      for (int j = 0; j < kStepsPerStage; ++j) {
        if (step0 + s * kStepsPerStage + j >= step1) break;
        uint32_t a0[4], a1[4];
        unpack_a(v_cur[j], a0, a1);
#pragma unroll
        for (int nt = 0; nt < kTokens / 8; ++nt) {
          if (nt * 8 >= tokens_here) break;
          const uint8_t* row = &xs[buf][(nt * 8 + lm_row) * kRowStride + j * 128];
          uint32_t b0[4], b1[4];
          ldmatrix_x4(b0, row + lm_col * 2);
          ldmatrix_x4(b1, row + 64 + lm_col * 2);
          mma_sp<0>(acc[nt], a0, b0, m_cur[j]);
          mma_sp<1>(acc[nt], a1, b1, m_cur[j]);
        }
      }
    }
    __syncthreads();  // the next iteration's cp.async overwrites this buffer
#pragma unroll
    for (int j = 0; j < kStepsPerStage; ++j) {
      v_cur[j] = v_next[j];
      m_cur[j] = m_next[j];
    }
  }

  if (!has_rows) return;
  // C fragment: c0, c1 at output row g, tokens 2t, 2t+1; c2, c3 at row g + 8.
  const int row = tile * 16 + g;
  const bool summed = gridDim.z > 1;
  const float ws[2] = {summed ? 1.f : w_scale[row], summed ? 1.f : w_scale[row + 8]};
#pragma unroll
  for (int nt = 0; nt < kTokens / 8; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int tk = tok0 + nt * 8 + 2 * t + (i & 1), r = row + (i >> 1) * 8;
      if (tk >= T) continue;
      const int64_t at = static_cast<int64_t>(tk) * N + r;
      if (summed) {  // this split's partial sums: [split][T][N]
        static_cast<float*>(out)[blockIdx.z * static_cast<int64_t>(T) * N + at] = acc[nt][i];
      } else {
        store(out, out_kind, at, acc[nt][i] * x_scale[tk] * ws[i >> 1]);
      }
    }
  }
}

// Few tokens (T <= 16, decode at small batch): 16-token blocks, 4 steps of weights in flight.
extern "C" __global__ void __launch_bounds__(kWarps * 32, 2)
    sparse24_mma_gemm_t16(const uint4* w_vals, const uint32_t* w_meta, const uint16_t* x,
                          const float* x_scale, const float* w_scale, void* out, int out_kind,
                          int T, int N, int K, int ldx, int steps_per_split) {
  gemm<16, 4>(w_vals, w_meta, x, x_scale, w_scale, out, out_kind, T, N, K, ldx, steps_per_split);
}

extern "C" __global__ void __launch_bounds__(kWarps * 32, 2)
    sparse24_mma_gemm_t32(const uint4* w_vals, const uint32_t* w_meta, const uint16_t* x,
                          const float* x_scale, const float* w_scale, void* out, int out_kind,
                          int T, int N, int K, int ldx, int steps_per_split) {
  gemm<32, 4>(w_vals, w_meta, x, x_scale, w_scale, out, out_kind, T, N, K, ldx, steps_per_split);
}

extern "C" __global__ void __launch_bounds__(kWarps * 32, 2)
    sparse24_mma_gemm_t64(const uint4* w_vals, const uint32_t* w_meta, const uint16_t* x,
                          const float* x_scale, const float* w_scale, void* out, int out_kind,
                          int T, int N, int K, int ldx, int steps_per_split) {
  gemm<64, 2>(w_vals, w_meta, x, x_scale, w_scale, out, out_kind, T, N, K, ldx, steps_per_split);
}

// The K splits' partial sums [splits][T][N] fp32 -> out [T][N] (out_kind), times the token's
// and the row's scales. One thread an output.
extern "C" __global__ void sparse24_mma_reduce(const float* __restrict__ partials, int splits,
                                               const float* __restrict__ x_scale,
                                               const float* __restrict__ w_scale, void* out,
                                               int out_kind, int T, int N) {
  const int64_t at = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t size = static_cast<int64_t>(T) * N;
  if (at >= size) return;
  float sum = 0.f;
  for (int z = 0; z < splits; ++z) sum += partials[z * size + at];
  store(out, out_kind, at, sum * x_scale[at / N] * w_scale[at % N]);
}

// X for the GEMM: one block a token (row of K inputs, K % 8 == 0, rows 16-byte aligned).
// x_kind 0: e4m3 -> f16 (exact; the caller keeps its scales); 1: bf16 -> f16 scaled to an
// absolute maximum of 2**10 (no overflow, f16's precision kept), its scale written to
// scale[row] (the GEMM multiplies it back).
extern "C" __global__ void __launch_bounds__(256)
    sparse24_mma_x_to_f16(const void* __restrict__ x, int x_kind, int K, int ldx,
                          uint16_t* __restrict__ x16, float* __restrict__ scale) {
  const int row = blockIdx.x;
  uint4* dst = reinterpret_cast<uint4*>(x16 + static_cast<int64_t>(row) * K);  // 8 a chunk
  if (x_kind == 0) {
    const uint2* src = reinterpret_cast<const uint2*>(static_cast<const uint8_t*>(x) +
                                                      static_cast<int64_t>(row) * ldx);
    for (int c = threadIdx.x; c < K / 8; c += blockDim.x) {
      const uint2 v = src[c];
      dst[c] = make_uint4(e4m3x2_to_f16x2(v.x), e4m3x2_to_f16x2(v.x >> 16),
                          e4m3x2_to_f16x2(v.y), e4m3x2_to_f16x2(v.y >> 16));
    }
    return;
  }
  const __nv_bfloat162* src = reinterpret_cast<const __nv_bfloat162*>(
      static_cast<const __nv_bfloat16*>(x) + static_cast<int64_t>(row) * ldx);
  float amax = 0.f;
  for (int c = threadIdx.x; c < K / 2; c += blockDim.x) {
    const float2 v = __bfloat1622float2(src[c]);
    amax = fmaxf(amax, fmaxf(fabsf(v.x), fabsf(v.y)));
  }
  __shared__ float warp_max[8];
  for (int o = 16; o > 0; o /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_max[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) amax = fmaxf(amax, warp_max[w]);
  const float s = fmaxf(amax, 1e-12f) / 1024.f;
  if (threadIdx.x == 0) scale[row] = s;
  __half2* out = reinterpret_cast<__half2*>(dst);
  for (int c = threadIdx.x; c < K / 2; c += blockDim.x) {
    const float2 v = __bfloat1622float2(src[c]);
    out[c] = __floats2half2_rn(v.x / s, v.y / s);
  }
}

// One warp a 16 x 64 tile (8 a block): lane (g, t) holds, for each half h and register r, the
// two kept values of row g + 8 (r % 2), group 8h + t + 4 (r / 2); their positions are in the
// metadata word of lane 4g + 2h + (group % 8) / 4, nibble group % 4 of the half for the row.
extern "C" __global__ void __launch_bounds__(256)
    sparse24_mma_expand(const uint4* __restrict__ w_vals, const uint32_t* __restrict__ w_meta,
                        uint32_t* __restrict__ dense,  // [N][K / 4]: one word a group
                        int N, int K) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * 8 + threadIdx.x / 32;
  const int ksteps = K / 64;
  if (tile >= static_cast<int64_t>(N / 16) * ksteps) return;  // whole warps
  const int row_tile = static_cast<int>(tile / ksteps), step = static_cast<int>(tile % ksteps);
  const uint4 v = w_vals[tile * 32 + lane];
  const uint32_t meta = w_meta[tile * 32 + lane];
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), group = 8 * h + t + 4 * (r / 2);
      const uint32_t m = __shfl_sync(0xffffffffu, meta, 4 * g + 2 * h + (group % 8) / 4);
      const uint32_t nibble = m >> (16 * (r % 2) + 4 * (group % 4)) & 15u;
      const uint32_t two = words[2 * h + r / 2] >> (16 * (r % 2)) & 0xffffu;
      const uint32_t word = (two & 0xffu) << (8 * (nibble & 3u)) | (two >> 8) << (8 * (nibble >> 2));
      dense[(static_cast<int64_t>(row_tile) * 16 + row) * (K / 4) + step * 16 + group] = word;
    }
  }
}

// One warp, one mma.sp m16n8k32 f16 with selector 0 or 1: a, b [32 lanes][4], meta [32],
// d [32 lanes][4]; registers exactly as given.
extern "C" __global__ void mma_sp_f16_probe(const uint32_t* a, const uint32_t* b,
                                            const uint32_t* meta, int selector, float* d) {
  const int lane = threadIdx.x % 32;
  uint32_t ra[4], rb[4];
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  for (int i = 0; i < 4; ++i) {
    ra[i] = a[lane * 4 + i];
    rb[i] = b[lane * 4 + i];
  }
  if (selector == 0) {
    mma_sp<0>(c, ra, rb, meta[lane]);
  } else {
    mma_sp<1>(c, ra, rb, meta[lane]);
  }
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = c[i];
}

// One warpgroup (128 threads), one wgmma.mma_async.sp m64n8k64 e4m3 (sm_90a only: the FP8
// sparse rate is wgmma's): a [128 threads][4] registers of the compressed 64 x 32 A, meta [128]
// their metadata words (selector 0: every thread's), b [8 tokens][64 inputs] e4m3 (K-major),
// put in shared memory as core matrices (8 tokens x 16 inputs, 128 bytes) back to back along
// K; d [128][4] fp32; lbo / sbo the descriptor's two strides. The GPU test checks the
// layouts the GEMM assumes.
__device__ __forceinline__ uint64_t smem_descriptor(const void* p, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) |
         static_cast<uint64_t>((lbo & 0x3FFFFu) >> 4) << 16 |
         static_cast<uint64_t>((sbo & 0x3FFFFu) >> 4) << 32;  // no swizzle, base offset 0
}

extern "C" __global__ void __launch_bounds__(128)
    wgmma_sp_e4m3_probe(const uint32_t* a, const uint32_t* meta, const uint8_t* b, float* d,
                        int lbo, int sbo) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  __shared__ __align__(128) uint8_t bs[2048];  // B in the first 512 bytes, zeros after
  const int t = threadIdx.x;
  for (int i = t; i < 2048; i += 128) {
    const int n = i / 64, k = i % 64;
    if (i < 8 * 64) bs[128 * (k / 16) + 16 * n + k % 16] = b[i];
    if (i >= 512) bs[i] = 0;
  }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // stores -> wgmma's proxy
  __syncthreads();
  const uint32_t a0 = a[4 * t], a1 = a[4 * t + 1], a2 = a[4 * t + 2], a3 = a[4 * t + 3];
  const uint32_t e = meta[t];
  // The layout's K step between core matrices is 128 bytes: the test passes LBO 128 (read as
  // that step) and SBO 1024 (between 8-token groups, unused at n8), into the zeros: were the
  // two read the other way round, the product would miss the inputs past the first 16 (the
  // test then tries them swapped).
  const uint64_t desc = smem_descriptor(bs, lbo, sbo);
  float c0 = 0.f, c1 = 0.f, c2 = 0.f, c3 = 0.f;
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %10, 0;\n"
      "wgmma.mma_async.sp.sync.aligned.m64n8k64.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, %9, 0, p, 1, 1;\n}\n"
      : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3)
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(e), "r"(0)
      : "memory");
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
  d[4 * t] = c0;
  d[4 * t + 1] = c1;
  d[4 * t + 2] = c2;
  d[4 * t + 3] = c3;
#else
  __trap();  // built for a GPU without wgmma
#endif
}

// One wgmma.mma_async.sp m64n64k64 e4m3 (64 tokens): d = A . B (+ d with kAccumulate), A's
// compressed values in four registers and its metadata word (selector 0), B by its
// shared-memory descriptor. The tensor cores' FP8 sums keep too few bits over a whole K, so
// the kernel starts each group of kPromote steps from zero and adds the group's product into
// its own fp32 sums. (d as outputs only where it starts from zero: "+f" there costs ptxas ~50
// more registers.)
#define WGMMA_D32(c)                                                                              \
  c(d[0]), c(d[1]), c(d[2]), c(d[3]), c(d[4]), c(d[5]), c(d[6]), c(d[7]), c(d[8]), c(d[9]),       \
  c(d[10]), c(d[11]), c(d[12]), c(d[13]), c(d[14]), c(d[15]), c(d[16]), c(d[17]), c(d[18]),       \
  c(d[19]), c(d[20]), c(d[21]), c(d[22]), c(d[23]), c(d[24]), c(d[25]), c(d[26]), c(d[27]),       \
  c(d[28]), c(d[29]), c(d[30]), c(d[31])
template <bool kAccumulate>
__device__ __forceinline__ void wgmma_sp(float (&d)[32], const uint4& a, uint32_t meta,
                                         uint64_t desc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define WGMMA_SP(c)                                                                               \
  asm volatile(                                                                                   \
      "{\n .reg .pred p;\n setp.ne.b32 p, %38, 0;\n"                                              \
      "wgmma.mma_async.sp.sync.aligned.m64n64k64.f32.e4m3.e4m3 {"                                 \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                    \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "         \
      "{%32, %33, %34, %35}, %36, %37, 0, p, 1, 1;\n}\n"                                          \
      : WGMMA_D32(c)                                                                              \
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(desc), "r"(meta), "n"(kAccumulate ? 1 : 0)    \
      : "memory")
  if constexpr (kAccumulate) {
    WGMMA_SP("+f");
  } else {
    WGMMA_SP("=f");
  }
#undef WGMMA_SP
#endif
}

// 2:4-sparse FP8 weights at FP8's sparse tensor-core rate (sm_90a): out[T, N] = X[T, K] .
// W[N, K]^T, X e4m3 (a fused norm's or a per-token quantization's output) times x_scale[T] and
// w_scale[N]. kGroups warpgroups a block, each 64 output rows (A from registers, packed by
// pack_for_mma with warpgroup_tables: each thread's 16 bytes and metadata word a 64-input
// step; warpgroups past N only copy X), all of them on the same 64 tokens (one wgmma's N; B
// from shared memory, copied once for the block: 16-byte core matrices of 8 tokens x 16
// inputs, the 8-token step 128 bytes, the K step 1,024): the more rows a block, the fewer
// times X is read. kDepth steps of A and X in flight (X by cp.async into a ring of kDepth
// buffers). kPromote steps a group: their wgmmas are issued back to back, summing in the
// tensor cores, then waited for and added into fp32. K splits as in the mma.sp kernel
// (partials summed by sparse24_mma_reduce). N % 64 == 0, K % 64 == 0, X rows 16-byte aligned;
// kDepth % kPromote == 0.
template <int kGroups, int kDepth, int kPromote, bool kWholeGroups>
__device__ __forceinline__ void wgmma_gemm(const uint4* __restrict__ w_vals,
                                           const uint32_t* __restrict__ w_meta,
                                           const uint8_t* __restrict__ x,
                                           const float* __restrict__ x_scale,
                                           const float* __restrict__ w_scale, void* out,
                                           int out_kind, int T, int N, int K, int ldx,
                                           int steps_per_split) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(kDepth % kPromote == 0, "a group's steps come from one refill");
  constexpr int kTokens = 64;          // one m64n64k64 a step
  constexpr int kKStep = kTokens * 16;  // bytes between a step's 16-input core columns
  constexpr int kRegs = kTokens / 2;   // D registers a thread
  __shared__ __align__(128) uint8_t xs[kDepth][kTokens * 64];
  const int t = threadIdx.x, w = t % 128 / 32, g = t % 32 / 4, q = t % 4;
  const int tile = blockIdx.y * kGroups + t / 128;  // the warpgroup's 64 output rows
  const bool rows = tile < N / 64;                  // uniform over the warpgroup
  const int tok0 = blockIdx.x * kTokens;
  const int ksteps = K / 64;
  const int step0 = blockIdx.z * steps_per_split;
  const int nsteps = min(step0 + steps_per_split, ksteps) - step0;
  if (nsteps <= 0) return;  // uniform over the block

  // Thread t copies inputs 16 (t % 4) to 16 (t % 4) + 15 of tokens t / 4 + 32 kGroups i: the
  // same places every step, 64 inputs on (tokens past T: zeros).
  constexpr int kThreadTokens = 32 * kGroups;  // tokens the block's threads copy at once
  constexpr int kChunks = (kTokens + kThreadTokens - 1) / kThreadTokens;
  const int n0 = t / 4, kc = t % 4;
  const int dst0 = kc * kKStep + n0 / 8 * 128 + n0 % 8 * 16;  // token n0 + 8 j: + 128 j
  const uint8_t* src[kChunks];
  bool valid[kChunks];
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int tk = tok0 + n0 + kThreadTokens * i;
    valid[i] = tk < T;
    src[i] = x + (valid[i] ? static_cast<int64_t>(tk) * ldx : 0) + step0 * 64 + kc * 16;
  }
  auto load_x = [&](int s, int buf) {  // step s's X -> xs[buf], one commit group
    if (s < nsteps || kWholeGroups) {  // whole groups: zeros past the split's end
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        if (kTokens % kThreadTokens == 0 || n0 + kThreadTokens * i < kTokens) {
          const bool in = valid[i] && (!kWholeGroups || s < nsteps);
          const uint8_t* from = kWholeGroups && !in ? x : src[i] + s * 64;
          cp_async16(&xs[buf][dst0 + 16 * kThreadTokens * i], from, in);
        }
      }
    }
    asm volatile("cp.async.commit_group;\n" ::);
  };
  const int64_t base = static_cast<int64_t>(tile) * ksteps * 128 + t % 128;
  uint4 v[kDepth];
  uint32_t m[kDepth];
  auto load_a = [&](int s, uint4& vv, uint32_t& mm) {
    if (rows && s < nsteps) {
      vv = w_vals[base + static_cast<int64_t>(step0 + s) * 128];
      mm = w_meta[base + static_cast<int64_t>(step0 + s) * 128];
    } else if (kWholeGroups) {  // zero weights (metadata: inputs 0 and 1 of each four)
      vv = make_uint4(0u, 0u, 0u, 0u);
      mm = 0x44444444u;
    }
  };

  float acc[kRegs] = {}, part[kRegs];
#pragma unroll
  for (int j = 0; j < kDepth; ++j) {
    load_x(j, j);
    load_a(j, v[j], m[j]);
  }
  for (int s0 = 0; s0 < nsteps; s0 += kDepth) {
#pragma unroll
    for (int j0 = 0; j0 < kDepth; j0 += kPromote) {
      if (s0 + j0 >= nsteps) break;  // uniform
      // kDepth steps' X were asked for; this group's kPromote oldest are in
      asm volatile("cp.async.wait_group %0;\n" ::"n"(kDepth - kPromote));
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      __syncthreads();
      asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
      for (int p = 0; p < kPromote; ++p) {
        // uniform over the warpgroup (whole groups run on, multiplying zeros): this divergent
        // exit makes ptxas wait for each wgmma before the next (its report C7520)
        if (!kWholeGroups && (!rows || s0 + j0 + p >= nsteps)) break;
        const uint64_t desc = smem_descriptor(xs[j0 + p], kKStep, 128);
        if (p == 0) {
          wgmma_sp<false>(part, v[j0], m[j0], desc);
        } else {
          wgmma_sp<true>(part, v[j0 + p], m[j0 + p], desc);
        }
      }
      asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
      asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
      for (int i = 0; i < kRegs; ++i) acc[i] += part[i];
      __syncthreads();  // the group's buffers read: refill them
#pragma unroll
      for (int p = 0; p < kPromote; ++p) {
        load_x(s0 + j0 + p + kDepth, j0 + p);
        load_a(s0 + j0 + p + kDepth, v[j0 + p], m[j0 + p]);
      }
    }
  }
  asm volatile("cp.async.wait_group 0;\n" ::);
  if (!rows) return;

  // D fragment: d_i at row 16w + g + 8 ((i / 2) % 2), token 8 (i / 4) + 2q + i % 2.
  const bool summed = gridDim.z > 1;
#pragma unroll
  for (int i = 0; i < kRegs; ++i) {
    const int r = tile * 64 + 16 * w + g + 8 * ((i / 2) % 2);
    const int tk = tok0 + 8 * (i / 4) + 2 * q + i % 2;
    if (tk >= T) continue;
    const int64_t at = static_cast<int64_t>(tk) * N + r;
    if (summed) {
      static_cast<float*>(out)[blockIdx.z * static_cast<int64_t>(T) * N + at] = acc[i];
    } else {
      store(out, out_kind, at, acc[i] * x_scale[tk] * w_scale[r]);
    }
  }
#else
  __trap();  // built for a GPU without wgmma
#endif
}

// The forms (kernels/sparse24_wgmma.py's FORMS): 4 warpgroups (256 output rows) x 64 tokens a
// block, four steps summed at a time in the tensor cores. _g4p4: 4 steps in flight (~120
// registers: one block an SM); ptxas waits for each wgmma there (the exit at a split's end
// diverges). _g4p4w8 (the engine's) runs whole groups on zeros past the end instead, its four
// wgmmas issued back to back, one wait, and keeps 8 steps in flight, so that the next group's X
// and weights load while a group runs (124 registers). On the H100 (fp8_gemm_sweep, 70B layer
// at 64 / 256 / 512 rows) _g4p4w8 took 0.336 / 0.804 / 1.404 ms against _g4p4's 0.366 / 0.924
// / 1.652, the same largest error; whole groups at 4 in flight (_g4p4w) gained nothing (0.369 /
// 0.931 / 1.667), two steps summed at a time (_g4p2) lost 3-7%; 4 x 64 beat one warpgroup of 64
// or 128 tokens (1.9x at 512 rows) and 2 x 128 (1.3x). Those forms are in git history
// (9f0c7c7, 253bf4d, 000e5e2).
#define WGMMA_FORM(name, groups, depth, promote, whole)                                           \
  extern "C" __global__ void __launch_bounds__(128 * groups, 1)                                   \
      name(const uint4* w_vals, const uint32_t* w_meta, const uint8_t* x, const float* x_scale,   \
           const float* w_scale, void* out, int out_kind, int T, int N, int K, int ldx,           \
           int steps_per_split) {                                                                 \
    wgmma_gemm<groups, depth, promote, whole>(w_vals, w_meta, x, x_scale, w_scale, out, out_kind, \
                                              T, N, K, ldx, steps_per_split);                     \
  }
WGMMA_FORM(sparse24_wgmma_gemm_g4p4, 4, 4, 4, false)
WGMMA_FORM(sparse24_wgmma_gemm_g4p4w8, 4, 8, 4, true)
#undef WGMMA_FORM

// Each of n words: its low two e4m3 bytes as f16x2, as the GEMM unpacks the weights.
extern "C" __global__ void e4m3x2_probe(const uint32_t* in, uint32_t* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = e4m3x2_to_f16x2(in[i]);
}
