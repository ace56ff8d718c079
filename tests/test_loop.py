"""The training loop's ends: stops, errors, what an epoch reports, the run's ETA."""

import io
import json
import os
import re
import subprocess

import pytest

from googlenet_jax import experiment
from googlenet_jax import train
from googlenet_jax.errors import UserError
from googlenet_jax.runtime import preemption
from googlenet_jax.runtime import progress
from googlenet_jax.runtime.metric_writers import MetricWriter
from fake_data import NUM_TRAIN


def logged_epochs(workdir) -> list[tuple[int, int]]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(line['epoch'], line['step']) for line in map(json.loads, f)]


def stop_at(monkeypatch, stop_step):
  """Makes the loop's stop signal fire after `stop_step`, as a SIGTERM would."""
  monkeypatch.setattr(preemption.StopSignal, 'requested',
                      lambda self, step: step == stop_step)


@pytest.fixture
def closed_writers(monkeypatch):
  """The MetricWriters the loop opens, to check they were closed."""
  writers = []
  original_init = MetricWriter.__init__
  def recording_init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    writers.append(self)
  monkeypatch.setattr(MetricWriter, '__init__', recording_init)
  return writers


def test_a_stop_on_an_epochs_last_step_still_reports_that_epoch(
    config, tmp_path, monkeypatch, closed_writers):
  steps_per_epoch = NUM_TRAIN // config.batch_size
  stop_at(monkeypatch, steps_per_epoch)
  state = train.train_and_evaluate(experiment.build(config), str(tmp_path))
  assert int(state.step[0]) == steps_per_epoch
  assert logged_epochs(tmp_path) == [(1, steps_per_epoch)]
  assert closed_writers and all(writer.closed for writer in closed_writers)
  monkeypatch.undo()
  train.train_and_evaluate(experiment.build(config), str(tmp_path))
  # Resumed at the next epoch: each epoch is reported once.
  assert logged_epochs(tmp_path) == [(1, steps_per_epoch), (2, 2 * steps_per_epoch)]


def test_a_stop_mid_epoch_reports_the_epoch_after_the_resume(
    config, tmp_path, monkeypatch):
  stop_at(monkeypatch, 1)
  train.train_and_evaluate(experiment.build(config), str(tmp_path))
  assert logged_epochs(tmp_path) == []
  monkeypatch.undo()
  train.train_and_evaluate(experiment.build(config), str(tmp_path))
  assert [epoch for epoch, _ in logged_epochs(tmp_path)] == [1, 2]


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MiB file system: room to save one checkpoint of `config` (1 MiB, with 1 MiB
  more free, as a save asks), not two."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs', str(mount)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'Cannot mount a tmpfs (the tests need root): {mounted.stderr.strip()}')
  yield mount
  subprocess.run(['umount', str(mount)], check=True)


def test_a_full_disk_stops_in_one_line_and_the_same_command_resumes(
    config, small_disk, closed_writers):
  two_steps = config.copy_and_resolve_references()
  two_steps.num_train_steps = 2
  two_steps.checkpoint_every_steps = 1
  workdir = small_disk / 'w'
  checkpoints = workdir / 'checkpoints'
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(experiment.build(two_steps), str(workdir))
  assert re.fullmatch(
      f'Cannot save the checkpoint of step 2 in {checkpoints} \\(No space left on '
      r'device: it needs \d+ MiB, \d+ MiB are free\): stopped. The last good '
      f'checkpoint is step 1 in {checkpoints}; free space \\(or fix the directory\\) '
      'and run the same command to resume from it.', str(error.value)), error.value
  assert len(closed_writers) == 1 and closed_writers[0].closed
  assert sorted(os.listdir(checkpoints)) == ['1']
  # With space freed, the same command resumes from step 1.
  subprocess.run(['mount', '-o', 'remount,size=8m', str(small_disk)], check=True)
  train.train_and_evaluate(experiment.build(two_steps), str(workdir))
  assert sorted(os.listdir(checkpoints)) == ['1', '2']
  assert logged_epochs(workdir) == [(1, 2)]


def test_a_timed_checkpoint_is_saved_when_its_minutes_have_passed(config, tmp_path):
  # What a stop without a signal (maintenance without Autocheckpoint, a lost
  # Spot VM) loses is bounded by the time since the last checkpoint.
  two_steps = config.copy_and_resolve_references()
  two_steps.num_train_steps = 2  # The first epoch has 3 steps: step 1 is mid-epoch.
  two_steps.checkpoint_every_minutes = 1e-9  # Passed after every step.
  train.train_and_evaluate(experiment.build(two_steps), str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_an_os_error_after_a_save_names_the_file_and_the_checkpoint(config, tmp_path):
  one_step = config.copy_and_resolve_references()
  one_step.num_train_steps = 1
  (tmp_path / 'curves.png').mkdir()  # Where the epoch's curves are drawn.
  with pytest.raises(UserError) as error:
    train.train_and_evaluate(experiment.build(one_step), str(tmp_path))
  assert str(error.value).startswith(
      f'Is a directory ({tmp_path}/curves.png): stopped. The last good checkpoint is '
      f'step 1 in {tmp_path}/checkpoints;'), error.value


def test_an_epoch_logs_the_learning_rate_of_its_last_update(config, tmp_path):
  cosine = config.copy_and_resolve_references()
  cosine.schedule = 'cosine'
  steps_per_epoch = 3
  schedule = experiment.create_learning_rate_fn(cosine, steps_per_epoch)
  last_step = 2 * steps_per_epoch  # The run's end, where the schedule reaches 0.
  metrics = {'loss': 2.0, 'correct': 1.0, 'count': 16.0}
  with MetricWriter(str(tmp_path)) as writer:
    train.report_epoch(writer, str(tmp_path), last_step, 1, metrics,
                       {'loss': 2.0, 'accuracy': 0.1}, 10.0,
                       float(experiment.build(cosine).learning_rate_fn(last_step - 1)))
  with open(tmp_path / 'metrics.jsonl') as f:
    logged = json.loads(f.readline())['learning_rate']
  assert float(schedule(last_step)) == 0.0
  assert logged == pytest.approx(float(schedule(last_step - 1)))
  assert logged > 0


def test_the_progress_line_shows_the_runs_remaining_time(monkeypatch):
  now = [0.0]
  monkeypatch.setattr(progress.time, 'perf_counter', lambda: now[0])
  stream = io.StringIO()
  bar = progress.Progress('epoch 1/3', total=10, images_per_step=16,
                          steps_after=20, stream=stream, report_every_secs=0,
                          enabled=True)
  for _ in range(5):
    now[0] += 1.0  # A step takes a second.
    bar.update()
  line = stream.getvalue().splitlines()[-1]
  # 5 steps of this epoch and 20 after it at 1 step/s.
  assert line == 'epoch 1/3 step 5/10: 16.0 images/s, ETA 00:05, run ETA 00:25', line


def test_epoch_progress_counts_the_later_epochs_for_the_run_eta():
  bar = progress.epoch_progress(step=4, num_steps=10, steps_per_epoch=3,
                                batch_size=16)
  assert (bar._total, bar._steps_after) == (3, 4)  # Epoch 2 of 4: steps 3-6, then 4.
