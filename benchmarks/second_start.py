"""What the persistent compilation cache saves: two starts of the benchmark, one cache.

  python -m benchmarks.second_start -- --config=configs/fmnist96.py --batch_size=128

Runs benchmarks/benchmark.py twice, each in a fresh process, with one new,
empty --config.compilation_cache_dir: the first start compiles and fills it,
the second reads it. Prints each start's time to its first step (compiling
the train step and running it once, from the benchmark's JSON) and the whole
process's wall time, and the ratio second / first. Arguments after `--` go to
the benchmark, after these defaults: --noreal_data --warmup=1 --steps=1
--host_steps=1 --matmul_size=512.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app

DEFAULTS = ('--noreal_data', '--warmup=1', '--steps=1', '--host_steps=1',
            '--matmul_size=512')


def start(args: list[str], cache_dir: str, json_out: str) -> dict[str, float]:
  """Runs the benchmark once; its time to first step and the process's wall time."""
  command = [sys.executable, '-m', 'benchmarks.benchmark', *DEFAULTS, *args,
             f'--config.compilation_cache_dir={cache_dir}', f'--json_out={json_out}']
  begin = time.perf_counter()
  subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
  wall_s = time.perf_counter() - begin
  with open(json_out) as f:
    results = json.load(f)['results']
  return {'time_to_first_step_s': results['time_to_first_step_s'], 'wall_s': wall_s}


def main(argv):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  os.chdir(repo)  # `python -m benchmarks.benchmark` resolves from here.
  work = tempfile.mkdtemp(prefix='second_start_')
  try:
    cache_dir = os.path.join(work, 'cache')
    starts = [start(argv[1:], cache_dir, os.path.join(work, f'start{i}.json'))
              for i in (1, 2)]
  finally:
    shutil.rmtree(work)
  for label, s in zip(('first, empty cache', 'second, cache filled'), starts):
    print(f'{label:<22}time to first step {s["time_to_first_step_s"]:6.1f} s, '
          f'process {s["wall_s"]:6.1f} s')
  first, second = (s['time_to_first_step_s'] for s in starts)
  print(f'second / first: {second / first:.2f} (time to first step; target <= 0.5), '
        f'load average {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  app.run(main)
