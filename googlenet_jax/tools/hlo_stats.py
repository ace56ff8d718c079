"""Counts read from the text of a step's HLO: convolutions and their dtypes, cuDNN calls,
max-pool gradients and collectives.

The lowered text (StableHLO) is the step as JAX hands it to XLA; the compiled
text (HLO) is what XLA made of it for one backend.
"""

import math
import re

COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute',
               'all-to-all')

_DEFINITION = re.compile(r'^\s*(?:ROOT )?%([\w.-]+) = (\w+)\[', re.MULTILINE)
_CONVOLUTION = re.compile(r'= \w+\[.*? convolution\(%([\w.-]+), %([\w.-]+)\).*?'
                          r'op_name="([^"]*)"')
_LOWERED_CONVOLUTION = re.compile(
    r'stablehlo\.convolution\(.*: \(tensor<[\dx]*x(\w+)>, tensor<[\dx]*x(\w+)>\)')
# XLA's GPU compiler makes each convolution a cuDNN call, which returns its
# result and a scratch buffer (u8) for cuDNN's workspace.
_CUDNN_CALL = re.compile(
    r'= \(\w+\[[^\]]*\]\{[^}]*\}, u8\[(\d+)\]\{0\}\) custom-call\(%([\w.-]+), %([\w.-]+)'
    r'.*?custom_call_target="__cudnn\$(\w+)"')


def _count(counts: dict, *keys: str) -> None:
  """Adds one to counts[k1][k2]...[kn], making the inner dicts as needed."""
  *outer, last = keys
  for key in outer:
    counts = counts.setdefault(key, {})
  counts[last] = counts.get(last, 0) + 1


def _dtypes(*dtypes: str) -> str:
  """'bf16' for operands of one dtype, 'bf16/f32' for mixed."""
  return '/'.join(sorted(set(dtypes)))


def lowered_convolution_dtypes(stablehlo_text: str) -> dict[str, int]:
  """{operand dtype: count} of the convolutions JAX hands to XLA (StableHLO text).

  These are the model's convolutions and their gradients, as the step asks for
  them; 'bf16/f32' for mixed operands.
  """
  counts = {}
  for lhs, rhs in _LOWERED_CONVOLUTION.findall(stablehlo_text):
    _count(counts, _dtypes(lhs, rhs))
  return counts


def convolution_dtypes(hlo_text: str) -> dict[str, dict[str, int]]:
  """Operand dtypes of a compiled HLO module's convolution instructions, counted.

  {'convolutions': the model's convolutions and their gradients (from
  lax.conv_general_dilated), 'dots': matmuls that XLA's TPU backend also
  emits as convolution instructions (the dense layer, the bilinear resize)},
  each {'bf16': n, ...}. 'bf16/f32' is a convolution into which XLA folded
  the conversion of its float32 kernel to bfloat16.
  """
  dtypes = dict(_DEFINITION.findall(hlo_text))
  counts = {'convolutions': {}, 'dots': {}}
  for lhs, rhs, op_name in _CONVOLUTION.findall(hlo_text):
    kind = 'convolutions' if 'conv_general_dilated' in op_name else 'dots'
    _count(counts, kind, _dtypes(dtypes.get(lhs, '?'), dtypes.get(rhs, '?')))
  return counts


def cudnn_calls(hlo_text: str) -> dict[str, dict[str, int]]:
  """{cuDNN call kind: {dtype of its two operands: count}} of compiled GPU HLO.

  The kinds are XLA's: convForward, convBiasActivationForward (a convolution
  with its bias and activation fused), convBackwardInput, convBackwardFilter;
  XLA writes some gradients as forward convolutions.
  """
  dtypes = dict(_DEFINITION.findall(hlo_text))
  counts = {}
  for _, lhs, rhs, kind in _CUDNN_CALL.findall(hlo_text):
    _count(counts, kind, _dtypes(dtypes.get(lhs, '?'), dtypes.get(rhs, '?')))
  return counts


def cudnn_workspace_bytes(hlo_text: str) -> int:
  """The bytes of the scratch buffers of compiled GPU HLO's cuDNN calls, summed.

  Without a GPU to autotune on, XLA picks no cuDNN algorithm and gives each
  call an empty workspace; on a GPU, autotuning may pick algorithms that need one.
  """
  return sum(int(size) for size, *_ in _CUDNN_CALL.findall(hlo_text))


def max_pool_ops(hlo_text: str) -> dict[str, int]:
  """Counts of XLA's max-pool gradient and of the CPU form's own in compiled HLO."""
  return {'select-and-scatter': len(re.findall(r'\sselect-and-scatter\(', hlo_text)),
          'indexed_max_pool': len(re.findall(r'op_name="[^"]*indexed_max_pool', hlo_text))}


def collectives(hlo_text: str) -> dict[str, int]:
  """{collective: count} in a compiled HLO module's text; async pairs count once."""
  counts = {}
  for name in COLLECTIVES:
    count = len(re.findall(rf'\s{name}(?:-start)?\(', hlo_text))
    if count:
      counts[name] = count
  return counts


def collective_group_sizes(hlo_text: str) -> list[int]:
  """The distinct numbers of devices that the collectives of compiled HLO span.

  XLA writes the groups as lists (`{{0,1,2,3}}`), as an iota (`[1,4]<=[4]`), or,
  from JAX 0.12 on, as axes of a mesh (`mesh['i'=4] {'i'}`).
  """
  sizes = {len(group.split(',')) for group in
           re.findall(r'replica_groups=\{\{([\d,]+)\}', hlo_text)}
  sizes |= {int(size) for size in re.findall(r'replica_groups=\[\d+,(\d+)\]<=', hlo_text)}
  for axes, grouped in re.findall(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", hlo_text):
    axis_sizes = {name: int(size) for name, size in re.findall(r"'(\w+)'=(\d+)", axes)}
    sizes.add(math.prod(axis_sizes[name] for name in re.findall(r"'(\w+)'", grouped)))
  return sorted(sizes)


_ENTRY = re.compile(r'^ENTRY [^\n]*\{\n(.*?)\n\}', re.MULTILINE | re.DOTALL)
_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT )?%([\w.-]+) = (\([^=]*?\)|\w+\[[\d,]*\](?:\{[^}]*\})?) ([\w-]+)\(([^)]*)\)',
    re.MULTILINE)
_ARRAY = re.compile(r'(\w+)\[([\d,]*)\]')
_OPERAND = re.compile(r'%([\w.-]+)')
_BITS = {'pred': 8, 'token': 0, 'f64': 64, 's64': 64, 'u64': 64, 'c64': 64, 'c128': 128}
# Instructions that launch no kernel: they name buffers, or finish an async
# start whose kernel moved the bytes.
_NO_KERNEL = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
              'after-all', 'partition-id', 'replica-id', 'opt-barrier')


def _bytes(shape: str) -> int:
  """The bytes of an HLO shape: one array (bf16[8,128]) or a tuple of them."""
  total = 0
  for dtype, dims in _ARRAY.findall(shape):
    width = re.search(r'\d+', dtype)  # bf16 -> 16, f8e4m3fn -> 8.
    bits = _BITS[dtype] if dtype in _BITS else int(width.group()) if width else 8
    total += math.prod(int(d) for d in dims.split(',') if d) * bits // 8
  return total


def kernel_bytes(hlo_text: str) -> int | None:
  """The bytes that the kernels of a compiled module's entry computation read and write.

  Each fusion, library call (cuDNN, cuBLAS) or collective reads its operands
  from HBM and writes its results, as XLA's cost analysis counts 'bytes
  accessed'; buffers that stay in a cache between kernels are counted too, so
  this is an estimate of the traffic, not a bound. None where the entry
  computation loops or calls (a scanned model): its kernels run an unknown
  number of times.
  """
  entry = _ENTRY.search(hlo_text)
  if entry is None:
    raise ValueError('no ENTRY computation in the HLO text')
  shapes, total = {}, 0
  for name, shape, opcode, operands in _INSTRUCTION.findall(entry.group(1)):
    shapes[name] = shape
    if opcode in _NO_KERNEL or opcode.endswith('-done'):
      continue
    if opcode in ('while', 'call', 'conditional'):
      return None
    total += _bytes(shape) + sum(_bytes(shapes.get(o, '')) for o in _OPERAND.findall(operands))
  return total
