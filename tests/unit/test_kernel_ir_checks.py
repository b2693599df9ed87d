"""kernel_compile_check's reading of compiled Triton IR (plain text, no Triton needed)."""

from __future__ import annotations

from harness.report.kernel_compile_check import loop_instructions, sync_loads_in_loop

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


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;              /* 0x00000a00ff017b82 */
        /*0010*/               @P0 BRA 0x0070 ;                        /* 0x0000004000780947 */
        /*0020*/                   LDS R4, [R2] ;                      /* 0x0000000002047984 */
        /*0030*/                   LOP3.LUT R5, R4, 0xff, RZ, 0xc0, !PT ; /* 0x000000ff04057812 */
        /*0040*/                   HMMA.16816.F32 R8, R4, R6, R8 ;     /* 0x0000000604087236 */
        /*0050*/              @!P0 BRA 0x0020 ;                        /* 0xffffffbc00f48947 */
        /*0060*/                   STG.E [R2.64], R8 ;                 /* 0x0000000802007986 */
        /*0070*/                   EXIT ;                              /* 0x000000000000794d */
        /*0080*/                   BRA 0x0080;                         /* 0xfffffffc00fc7947 */
"""


def test_the_k_loop_is_the_longest_backward_branch() -> None:
    assert loop_instructions(SASS) == 4  # 0x20 .. 0x50, the branch included
    assert loop_instructions(SASS.replace("BRA 0x0020", "BRA 0x0010")) == 5


def test_no_backward_branch_no_loop() -> None:
    assert loop_instructions(SASS.replace("@!P0 BRA 0x0020", "NOP")) == 0  # BRA to itself only
