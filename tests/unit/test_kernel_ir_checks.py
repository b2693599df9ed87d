"""kernel_compile_check's reading of compiled Triton IR (plain text, no Triton needed)."""

from __future__ import annotations

from harness.report.kernel_compile_check import sync_loads_in_loop

PIPELINED = """
    %a = ttg.async_copy_global_to_local %p, %q : tensor<64x128x!tt.ptr<i8>> -> <64x128xi8>
    %r:3 = scf.for %k = %c0 to %n step %c256 iter_args(%acc = %z) {
      %w = ttg.local_load %buf : !ttg.memdesc<64x128xi8> -> tensor<64x128xi8>
      %b = ttg.async_copy_global_to_local %p2, %q2 : tensor<64x128x!tt.ptr<i8>> -> <64x128xi8>
      scf.yield %acc2
    }
    %xs = tt.load %xs_ptr, %mask : tensor<16x!tt.ptr<f32>>
"""


def test_loads_after_the_loop_do_not_count() -> None:
    assert sync_loads_in_loop(PIPELINED) == 0


def test_a_synchronous_load_in_the_loop_counts() -> None:
    ir = PIPELINED.replace(
        "      scf.yield",
        "      %m = tt.load %meta, %ok : tensor<64x32x!tt.ptr<i8>>\n      scf.yield",
    )
    assert sync_loads_in_loop(ir) == 1
    assert sync_loads_in_loop("tt.func @k() { tt.return }") == 0  # no loop
