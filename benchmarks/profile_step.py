"""Where the train step's time goes: XLA's per-operation profile, grouped by kind.

Run from the repository root (a script, not a test):

  python -m benchmarks.profile_step --config=configs/fmnist96.py --batch_size=128 \
      --warmup=2 --steps=3 --json_out=/tmp/profile.json

Traces --steps steps of the pmapped train step of `googlenet_jax.steps` on a
synthetic device-resident batch with `jax.profiler`, reads the trace back
(`jax.profiler.ProfileData`), and sums the time of each XLA operation that ran
(each thunk of the compiled program, on the CPU). Each operation is put in a
group by what the compiled HLO computes in it (matmuls, copies, pools and their
gradients, ...) and in a pass by where its ops come from: the forward pass, the
backward pass (JAX's `transpose(jvp(...))`), or neither (the input resize, the
optimizer update). Prints the groups, then the top operations; `--json_out`
keeps every operation. Takes benchmark.py's --config (with --config.x=
overrides), --batch_size, --warmup and --steps.
"""

import collections
import glob
import json
import re
import tempfile
import time

from absl import app
from absl import flags
import jax
from jax import profiler

from benchmarks import benchmark
from googlenet_jax import experiment
from googlenet_jax import sharding
from googlenet_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer('top', 25, 'Operations listed one by one, the slowest first.')

# Ops that only move or reshape data: a fusion of nothing else is a copy.
DATA_MOVEMENT = frozenset({
    'bitcast', 'broadcast', 'concatenate', 'constant', 'copy', 'dynamic-slice',
    'dynamic-update-slice', 'get-tuple-element', 'iota', 'pad', 'parameter',
    'reshape', 'reverse', 'slice', 'transpose', 'tuple'})
GROUPS = ('matmuls and convolutions', 'max-pool gradient', 'pooling',
          'copies: im2col, concatenation, slices, padding', 'reductions',
          'elementwise', 'resize', 'optimizer update', 'collectives')


class Instruction:
  """One HLO instruction of the compiled step and what it computes."""

  def __init__(self, name: str, opcode: str, line: str):
    self.name = name
    self.opcode = opcode
    self.called = re.findall(r'(?:calls|to_apply)=%([\w.-]+)', line)
    self.operands = [n for n in re.findall(r'%([\w.-]+)', line.split(' = ', 1)[1])
                     if n not in self.called]
    self.op_names = re.findall(r'op_name="([^"]*)"', line)


def parse_hlo(text: str) -> dict[str, list[Instruction]]:
  """{computation name: its instructions} of an HLO module's text."""
  computations, current = {}, None
  for line in text.splitlines():
    header = re.match(r'^(?:ENTRY )?%([\w.-]+) .*\{\s*$', line)
    if header:
      current = computations.setdefault(header.group(1), [])
      continue
    instruction = re.match(r'^\s+(?:ROOT )?%([\w.-]+) = .*? ([a-z][a-z0-9-]*)\(', line)
    if instruction and current is not None:
      current.append(Instruction(instruction.group(1), instruction.group(2), line))
  return computations


def contents(instruction: Instruction, computations) -> list[Instruction]:
  """`instruction` and every instruction of the computations it calls, recursively."""
  found = [instruction]
  for name in instruction.called:
    for inner in computations.get(name, []):
      found += contents(inner, computations)
  return found


def described_by(instruction: Instruction, computations,
                 users: dict[str, list[Instruction]]) -> list[Instruction]:
  """The instructions an operation is made of, or, where XLA made them without
  JAX's op names (e.g. the iotas of an expanded select-and-scatter), those of
  the nearest operation that uses its result and has them."""
  parts = contents(instruction, computations)
  queue, seen = [instruction], {instruction.name}
  while queue and not any(p.op_names for p in parts):
    for user in users[queue.pop(0).name]:
      if user.name not in seen:
        seen.add(user.name)
        queue.append(user)
        if any(p.op_names for p in contents(user, computations)):
          return parts + contents(user, computations)
  return parts


def group_of(parts: list[Instruction]) -> str:
  """The GROUPS entry of an operation made of the instructions `parts`.

  In the backward pass a reduce-window is part of a max-pool's gradient: XLA's
  CPU backend expands select-and-scatter into a reduce-window over (value,
  index) pairs, iotas and a scatter. The CPU form's `indexed_max_pool` is found
  by its name (a forward pass of slices and selects, a gather of a gradient).
  """
  opcodes = {p.opcode for p in parts}
  op_names = ' '.join(n for p in parts for n in p.op_names)
  if opcodes & {'dot', 'convolution'}:
    return 'matmuls and convolutions'
  if ({'select-and-scatter', 'scatter'} & opcodes or 'select_and_scatter' in op_names
      or 'max_pool_gradient' in op_names):
    return 'max-pool gradient'
  if 'reduce-window' in opcodes or 'indexed_max_pool' in op_names:
    return 'max-pool gradient' if pass_of(parts) == 'backward' else 'pooling'
  if opcodes & {'all-reduce', 'all-gather', 'reduce-scatter', 'collective-permute'}:
    return 'collectives'
  if 'resize' in op_names:
    return 'resize'
  if 'apply_gradients' in op_names:
    return 'optimizer update'
  if opcodes <= DATA_MOVEMENT:
    return 'copies: im2col, concatenation, slices, padding'
  if 'reduce' in opcodes:
    return 'reductions'
  return 'elementwise'


def pass_of(parts: list[Instruction]) -> str:
  """'backward', 'forward' or 'other' (resize, loss, optimizer) from the ops' names."""
  op_names = [n for p in parts for n in p.op_names]
  if any('transpose(' in n for n in op_names):
    return 'backward'
  if any('GoogLeNet' in n or 'jvp(' in n for n in op_names):
    return 'forward'
  return 'other'


def layer_of(parts: list[Instruction]) -> str:
  """The model's layer path an operation belongs to, e.g. b3/layers_0/ConvBlock_1."""
  for p in parts:
    for name in p.op_names:
      match = re.search(r'(?:GoogLeNet|Inception\w*)\)*/(.*)/[^/]+$', name)
      if match:
        return re.sub(r'\w+\(|\)', '', match.group(1))
  return ''


def thunk_times(trace_dir: str, module_name: str) -> dict[str, list[int]]:
  """{HLO operation: nanoseconds of each run} of `module_name` in the trace."""
  times = collections.defaultdict(list)
  for path in glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True):
    for plane in profiler.ProfileData.from_file(path).planes:
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          if stats.get('hlo_module') == module_name and 'hlo_op' in stats:
            times[stats['hlo_op']].append(event.duration_ns)
  return times


def profile(config) -> dict:
  """Traces FLAGS.steps train steps and returns every operation's time and kind."""
  built = experiment.build(config, load_data=False)
  state = sharding.replicate(built.initial_state())
  p_train_step = built.p_train_step
  batch = benchmark.synthetic_batch(config.batch_size)
  compiled = p_train_step.lower(state, batch).compile()
  text = compiled.as_text()
  module_name = re.match(r'HloModule ([\w.-]+)', text).group(1)
  for _ in range(FLAGS.warmup):
    state, metrics = p_train_step(state, batch)
  jax.block_until_ready((state, metrics))
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      start = time.perf_counter()
      for _ in range(FLAGS.steps):
        state, metrics = p_train_step(state, batch)
        jax.block_until_ready((state, metrics))
      wall_s = time.perf_counter() - start
    times = thunk_times(trace_dir, module_name)
  if not times:
    raise UserError(f'The trace has no operations of {module_name}: this backend '
                    'does not report per-operation times.')
  computations = parse_hlo(text)
  instructions = {i.name: i for body in computations.values() for i in body}
  users = collections.defaultdict(list)
  for instruction in instructions.values():
    for operand in instruction.operands:
      users[operand].append(instruction)
  operations = []
  for name, durations in times.items():
    parts = described_by(instructions[name], computations, users) if (
        name in instructions) else []
    operations.append({
        'name': name, 'group': group_of(parts), 'pass': pass_of(parts),
        'layer': layer_of(parts), 'runs_per_step': len(durations) / FLAGS.steps,
        'ms_per_step': sum(durations) / 1e6 / FLAGS.steps})
  operations.sort(key=lambda op: -op['ms_per_step'])
  return {'wall_ms_per_step': 1000 * wall_s / FLAGS.steps,
          'images_per_sec': config.batch_size * FLAGS.steps / wall_s,
          'operations': operations}


def group_table(operations: list[dict]) -> list[dict]:
  """Milliseconds per step of each group in each pass, the largest group first."""
  rows = collections.defaultdict(lambda: collections.Counter())
  for op in operations:
    rows[op['group']][op['pass']] += op['ms_per_step']
  total = sum(op['ms_per_step'] for op in operations)
  table = [{'group': group, 'forward': row['forward'], 'backward': row['backward'],
            'other': row['other'], 'total': sum(row.values()),
            'share': sum(row.values()) / total} for group, row in rows.items()]
  return sorted(table, key=lambda row: -row['total'])


def format_report(info: dict, result: dict, groups: list[dict]) -> str:
  """The groups' table, then the slowest operations, as plain text."""
  total = sum(row['total'] for row in groups)
  lines = [f"{info['device']}, batch {info['batch_size']}, {info['image_size']}x"
           f"{info['image_size']}, {info['dtype']}, convolutions as "
           f"{info['convolutions']}: {result['wall_ms_per_step']:.0f} ms per step "
           f"({result['images_per_sec']:.1f} images/s), operations sum to "
           f"{total:.0f} ms",
           '',
           f"{'group':<48}{'forward':>9}{'backward':>10}{'other':>8}{'total':>8}"
           f"{'share':>8}"]
  for row in groups:
    lines.append(f"{row['group']:<48}{row['forward']:>9.1f}{row['backward']:>10.1f}"
                 f"{row['other']:>8.1f}{row['total']:>8.1f}{100 * row['share']:>7.1f}%")
  lines += ['', f"{'operation':<34}{'group':<30}{'pass':<10}{'ms':>7}{'share':>8}  layer"]
  for op in result['operations'][:FLAGS.top]:
    lines.append(f"{op['name'][:33]:<34}{op['group'][:29]:<30}{op['pass']:<10}"
                 f"{op['ms_per_step']:>7.1f}{100 * op['ms_per_step'] / total:>7.1f}%"
                 f"  {op['layer']}")
  return '\n'.join(lines)


def main(argv):
  config = benchmark.checked(benchmark.config_from_flags(argv))
  try:
    # No compilation cache: its key leaves out the ops' names, so a cached
    # step would name its ops as the code that first compiled it did.
    info = benchmark.describe(config)
    result = profile(config)
  except UserError as e:  # One line, not a traceback.
    raise app.UsageError(str(e)) from e
  groups = group_table(result['operations'])
  print(format_report(info, result, groups))
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump({'info': info, 'groups': groups, **result}, f, indent=2)


if __name__ == '__main__':
  app.run(main)
