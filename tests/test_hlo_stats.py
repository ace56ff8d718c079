"""hlo_stats.kernel_bytes, the bytes a GPU compile's roofline counts, on HLO written by hand."""

from googlenet_jax.tools import hlo_stats

# A cuDNN call with its scratch buffer, a fusion reading the call's result
# twice over, and an all-reduce started and finished asynchronously.
MODULE = '''HloModule step

%fused (p0: bf16[8,128], p1: f32[128]) -> f32[8,128] {
  %p0 = bf16[8,128]{1,0} parameter(0)
  ROOT %c = f32[8,128]{1,0} convert(%p0)
}

ENTRY %main (x: bf16[8,64], w: bf16[64,128]) -> f32[8,128] {
  %x = bf16[8,64]{1,0} parameter(0)
  %w = bf16[64,128]{1,0} parameter(1)
  %conv = (bf16[8,128]{1,0}, u8[0]{0}) custom-call(%x, %w), custom_call_target="__cudnn$convForward"
  %y = bf16[8,128]{1,0} get-tuple-element(%conv), index=0
  %b = f32[128]{0} constant({...})
  %f = f32[8,128]{1,0} fusion(%y, %b), kind=kLoop, calls=%fused
  %ar = f32[8,128]{1,0} all-reduce-start(%f), replica_groups={{0,1}}, to_apply=%add
  ROOT %done = f32[8,128]{1,0} all-reduce-done(%ar)
}
'''


def test_each_kernel_reads_its_operands_and_writes_its_results_once():
  conv = (8 * 64 + 64 * 128) * 2 + 8 * 128 * 2  # Its operands, its result, no scratch.
  fusion = 8 * 128 * 2 + 128 * 4 + 8 * 128 * 4
  all_reduce = 2 * 8 * 128 * 4  # The start's; the done moves nothing more.
  assert hlo_stats.kernel_bytes(MODULE) == conv + fusion + all_reduce


def test_a_step_that_loops_has_no_count():
  looping = MODULE.replace('fusion(%y, %b), kind=kLoop, calls=%fused',
                           'while(%y), condition=%cond, body=%body')
  assert hlo_stats.kernel_bytes(looping) is None
