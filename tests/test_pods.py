"""Runs as on a TPU pod: a gs:// workdir on a real GCS server (127.0.0.1), hosts that
join, agree on their step and stop together, and a clear error instead of a hang.
"""

import io
import json
import os
import re
import signal
import time

import chex
from etils import epath
from matplotlib import image as mpimg
import pytest

from conftest import REPO, start_main
from googlenet_jax import evaluate
from googlenet_jax import predict
from googlenet_jax import train
from googlenet_jax import train_state


def finished_steps(gcs, workdir: str) -> list[int]:
  """Steps with a complete checkpoint in the bucket: Orbax's commit file marks one."""
  prefix = f'{workdir}/checkpoints/'
  found = (re.fullmatch(r'.*/checkpoints/(\d+)/commit_success.txt', name)
           for name in gcs.objects(prefix))
  return sorted(int(match[1]) for match in found if match)


def wait_for_step(process, gcs, workdir: str, step: int, timeout=240) -> None:
  deadline = time.monotonic() + timeout
  while not any(s >= step for s in finished_steps(gcs, workdir)):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline, f'no checkpoint of step {step} in time'
    time.sleep(0.05)


def test_a_run_in_a_bucket_is_killed_resumes_bit_exactly_and_is_evaluated(
    config, trained, gcs, bucket):
  workdir = f'{bucket}/run'
  process = start_main(workdir, config, '--config.checkpoint_every_steps=1')
  wait_for_step(process, gcs, workdir, 1)
  # Another process evaluates the bucket's latest checkpoint while it trains.
  evaluator = start_main(workdir, config, '--mode=eval', num_devices=1)
  wait_for_step(process, gcs, workdir, 2)
  process.send_signal(signal.SIGKILL)  # No chance to save.
  process.communicate()
  killed_at = finished_steps(gcs, workdir)[-1]
  assert 2 <= killed_at < 6
  stdout, stderr = evaluator.communicate(timeout=240)
  assert evaluator.returncode == 0, stderr[-3000:]
  assert 'Checkpoint at step ' in stdout
  # Resumed (here, in process) it ends where the uninterrupted run does, to the bit.
  resumed = train_state.unreplicate(train.train_and_evaluate(config, workdir))
  expected = train_state.unreplicate(trained[1])
  assert int(resumed.step) == int(expected.step) == 6
  chex.assert_trees_all_equal(resumed.params, expected.params)
  chex.assert_trees_all_equal(resumed.opt_state, expected.opt_state)
  # What the run leaves is in the bucket: every epoch once, curves, TensorBoard events.
  run = epath.Path(workdir)
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  assert mpimg.imread(io.BytesIO((run / 'curves.png').read_bytes())).ndim == 3
  assert any(p.name.startswith('events.out.tfevents') for p in run.iterdir())
  # Evaluated and predicted from the bucket.
  result = evaluate.evaluate_checkpoint(config, workdir)
  assert result['step'] == 6
  assert json.loads((run / 'eval.json').read_text())['accuracy'] == result['accuracy']
  path = predict.predict_checkpoint(config, workdir)
  assert path == f'{workdir}/predictions.png'
  assert mpimg.imread(io.BytesIO(epath.Path(path).read_bytes())).shape[2] in (3, 4)
  assert not os.path.exists(os.path.join(REPO, 'gs:'))  # Nothing written locally.
