// 2:4 FP8 GEMM on CUTLASS's SM90 sparse kernels (warp-specialized, TMA loads multicast over a
// 2-block cluster, wgmma.sp e4m3), the headers from PyPI's nvidia-cutlass (kernels/
// sparse24_cutlass.py finds them). d[T, N] fp32, unscaled = X[T, K] . W[N, K]^T: W the sparse
// A operand (row-major, K contiguous), X^T the dense B operand (column-major [K, T]: X's rows),
// D column-major [N, T] = d [T, N] row-major. Built as a shared library (CUTLASS's adapters
// launch from the host); extern "C" entry points for ctypes. Device 0's SM count sizes the
// compressor's grid.
#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/transform/device/transform_universal_adapter.hpp"
#include "cutlass/transform/kernel/sparse_gemm_compressor.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;

namespace {

using Fp8 = cutlass::float_e4m3_t;
using TagW = cutlass::layout::RowMajor;     // W [N, K]
using TagX = cutlass::layout::ColumnMajor;  // X^T [K, T]
using TagD = cutlass::layout::ColumnMajor;  // D [N, T]
constexpr int kAlign8 = 16;                 // 16-byte accesses, in e4m3 elements
// The configuration, from nvcc -D (kernels/sparse24_cutlass.py's VARIANTS): weight rows and
// tokens a tile (the GEMM's M and N), blocks a cluster along the tokens (sharing each weight
// tile by TMA multicast), whether FP8 sums stay in the tensor cores (fast accumulation) or are
// promoted to fp32 by the main loop, and the schedule: cooperative (both consumer warp groups
// on one tile) or ping-pong (each on its own tile, one's epilogue under the other's MMAs). The
// weight layout depends on the tile's K only (128 in every variant).
#ifndef S24C_TILE_M
#define S24C_TILE_M 128
#endif
#ifndef S24C_PINGPONG
#define S24C_PINGPONG 0
#endif
#ifndef S24C_TILE_N
#define S24C_TILE_N 128
#endif
#ifndef S24C_CLUSTER_N
#define S24C_CLUSTER_N 2
#endif
#ifndef S24C_FAST_ACCUM
#define S24C_FAST_ACCUM 0
#endif
using Tile = Shape<Int<S24C_TILE_M>, Int<S24C_TILE_N>, _128>;
using Cluster = Shape<_1, Int<S24C_CLUSTER_N>, _1>;
namespace gemm = cutlass::gemm;
using MainloopSchedule = cute::conditional_t<
    S24C_PINGPONG,
    cute::conditional_t<S24C_FAST_ACCUM, gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum,
                        gemm::KernelTmaWarpSpecializedPingpong>,
    cute::conditional_t<S24C_FAST_ACCUM, gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum,
                        gemm::KernelTmaWarpSpecializedCooperative>>;
using EpilogueSchedule =
    cute::conditional_t<S24C_PINGPONG, cutlass::epilogue::TmaWarpSpecialized,
                        cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Problem = Shape<int, int, int, int>;  // M (= N out), N (= T), K, L

// d = acc (fp32, unscaled), or out = bf16(x_scale[t] * w_scale[n] * acc): the scales broadcast
// along D's rows (w_scale, one per n: a column vector) and columns (x_scale, one per t).
using namespace cutlass::epilogue::fusion;
using RoundNearest = cutlass::FloatRoundStyle;
using WScale = Sm90ColBroadcast<0, Tile, float, float, Stride<_1, _0, _0>>;
using XScale = Sm90RowBroadcast<0, Tile, float, float, Stride<_0, _1, _0>>;
template <class Out>
using Times = Sm90Compute<cutlass::multiplies, Out, float, RoundNearest::round_to_nearest>;
using Scaled = Sm90EVT<Times<cutlass::bfloat16_t>, WScale,
                       Sm90EVT<Times<float>, XScale, Sm90AccFetch>>;

template <class ElementD, class Fusion>
using EpilogueOf = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, Tile, Cluster,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, TagD,
    16 / sizeof(ElementD), ElementD, TagD, 16 / sizeof(ElementD),
    EpilogueSchedule, Fusion>::CollectiveOp;

template <class Epilogue>
using MainloopOf = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassSparseTensorOp, Fp8, TagW, kAlign8, Fp8, TagX,
    kAlign8, float, Tile, Cluster,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename Epilogue::SharedStorage))>,
    MainloopSchedule>::CollectiveOp;

template <class Epilogue>
using GemmOf = cutlass::gemm::device::GemmUniversalAdapter<
    cutlass::gemm::kernel::GemmUniversal<Problem, MainloopOf<Epilogue>, Epilogue>>;

using GemmF32 = GemmOf<EpilogueOf<float, LinearCombination<float, float, void, float>>>;
using GemmBf16 = GemmOf<EpilogueOf<cutlass::bfloat16_t, Scaled>>;
using Mainloop = MainloopOf<EpilogueOf<float, LinearCombination<float, float, void, float>>>;
using Config = typename Mainloop::SparseConfig;
using ElementE = typename Mainloop::ElementE;
using StrideW = cutlass::gemm::TagToStrideA_t<TagW>;
using Utility =
    cutlass::transform::kernel::StructuredSparseCompressorUtility<Problem, Fp8, TagW, Config>;
using CompressKernel = cutlass::transform::kernel::StructuredSparseCompressor<
    Problem, Fp8, TagW, Config, cutlass::arch::Sm90>;
using Compressor = cutlass::transform::device::TransformUniversalAdapter<CompressKernel>;

Problem problem(int n, int t, int k) { return make_tuple(n, t, k, 1); }

int status(cutlass::Status s) {
  return s == cutlass::Status::kSuccess ? 0 : static_cast<int>(s) + 1;
}

typename Compressor::Arguments compress_args(const void* w, void* w_c, void* e, int n, int k) {
  cutlass::KernelHardwareInfo hw;
  hw.device_id = 0;
  hw.sm_count = cutlass::KernelHardwareInfo::query_device_multiprocessor_count(0);
  const auto stride_w = cutlass::make_cute_packed_stride(StrideW{}, make_shape(n, k, 1));
  return {problem(n, 1, k),
          {static_cast<const Fp8*>(w), stride_w, static_cast<Fp8*>(w_c), static_cast<ElementE*>(e)},
          {hw}};
}

// The epilogue's arguments (its fusion tree's) of a GEMM.
template <class Gemm>
using EpilogueArgs = typename Gemm::GemmKernel::CollectiveEpilogue::FusionCallbacks::Arguments;

template <class Gemm>
typename Gemm::Arguments gemm_args(const void* w_c, const void* e, const void* x, void* d, int n,
                                   int t, int k, EpilogueArgs<Gemm> thread) {
  using Kernel = typename Gemm::GemmKernel;
  using ElementD = typename Kernel::ElementD;
  const auto p = problem(n, t, k);
  using cutlass::make_cute_packed_stride;
  const auto stride_x = make_cute_packed_stride(typename Kernel::StrideB{}, make_shape(t, k, 1));
  const auto stride_d = make_cute_packed_stride(typename Kernel::StrideD{}, make_shape(n, t, 1));
  return {cutlass::gemm::GemmUniversalMode::kGemm,
          p,
          {static_cast<const Fp8*>(w_c), Config::fill_layoutA(p), static_cast<const Fp8*>(x),
           stride_x, static_cast<const ElementE*>(e), Config::fill_layoutE(p)},
          {thread, nullptr, stride_d, static_cast<ElementD*>(d), stride_d}};
}

typename GemmF32::Arguments f32_args(const void* w_c, const void* e, const void* x, float* d,
                                     int n, int t, int k) {
  return gemm_args<GemmF32>(w_c, e, x, d, n, t, k, {1.0f, 0.0f});
}

typename GemmBf16::Arguments bf16_args(const void* w_c, const void* e, const void* x, void* out,
                                       const float* x_scale, const float* w_scale, int n, int t,
                                       int k) {
  // Scaled's tree: {w_scale, {x_scale, acc, times}, times}
  EpilogueArgs<GemmBf16> thread{{w_scale, 0.0f, {}}, {{x_scale, 0.0f, {}}, {}, {}}, {}};
  return gemm_args<GemmBf16>(w_c, e, x, out, n, t, k, thread);
}

// Check, initialize and run a CUTLASS operation on stream.
template <class Op>
int run(typename Op::Arguments const& args, void* workspace, int64_t workspace_bytes,
        void* stream) {
  Op op;
  if (static_cast<int64_t>(Op::get_workspace_size(args)) > workspace_bytes) return -1;
  const auto s = static_cast<cudaStream_t>(stream);
  cutlass::Status status_ = op.can_implement(args);
  if (status_ == cutlass::Status::kSuccess) status_ = op.initialize(args, workspace, s);
  if (status_ == cutlass::Status::kSuccess) status_ = op.run(s);
  return status(status_);
}

}  // namespace

extern "C" {

// Elements of the compressed W and bytes of its metadata for an [n, k] weight.
int s24c_sizes(int n, int k, int64_t* w_elems, int64_t* e_bytes) {
  Utility u(problem(n, 1, k), cutlass::make_cute_packed_stride(StrideW{}, make_shape(n, k, 1)));
  *w_elems = static_cast<int64_t>(n) * u.get_tensorA_k_physical();
  *e_bytes = static_cast<int64_t>(u.get_metadata_m_physical()) * u.get_metadata_k_physical() *
             static_cast<int64_t>(sizeof(ElementE));
  return 0;
}

// Workspace bytes: of the compressor for an [n, k] weight (t == 0), else of the GEMM at t tokens
// (the larger of its two outputs').
int64_t s24c_workspace(int n, int t, int k) {
  if (t == 0) return Compressor::get_workspace_size(compress_args(nullptr, nullptr, nullptr, n, k));
  const auto f32 =
      GemmF32::get_workspace_size(f32_args(nullptr, nullptr, nullptr, nullptr, n, t, k));
  const auto bf16 = GemmBf16::get_workspace_size(
      bf16_args(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, n, t, k));
  return static_cast<int64_t>(f32 > bf16 ? f32 : bf16);
}

// Compress a pruned 2:4 e4m3 weight w [n, k] (device) into w_c and e (sizes: s24c_sizes).
int s24c_compress(const void* w, void* w_c, void* e, int n, int k, void* workspace,
                  int64_t workspace_bytes, void* stream) {
  return run<Compressor>(compress_args(w, w_c, e, n, k), workspace, workspace_bytes, stream);
}

// d [t, n] fp32 = x [t, k] e4m3 (row-major) . W^T, W compressed by s24c_compress.
int s24c_gemm(const void* w_c, const void* e, const void* x, float* d, int n, int t, int k,
              void* workspace, int64_t workspace_bytes, void* stream) {
  return run<GemmF32>(f32_args(w_c, e, x, d, n, t, k), workspace, workspace_bytes, stream);
}

// out [t, n] bf16 = x_scale[t] * w_scale[n] * (x . W^T), the scales fp32 (device).
int s24c_gemm_bf16(const void* w_c, const void* e, const void* x, void* out, const float* x_scale,
                   const float* w_scale, int n, int t, int k, void* workspace,
                   int64_t workspace_bytes, void* stream) {
  return run<GemmBf16>(bf16_args(w_c, e, x, out, x_scale, w_scale, n, t, k), workspace,
                       workspace_bytes, stream);
}

}  // extern "C"
