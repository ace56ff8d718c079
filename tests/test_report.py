"""What users see: progress lines, curves, the evaluation report and predictions."""

import io
import json
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
from matplotlib import image as mpimg
import numpy as np
import pytest

from googlenet_jax import eval_report
from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import plots
from googlenet_jax import predict
from googlenet_jax.data import fashion_mnist
from googlenet_jax.runtime import progress
from fake_data import NUM_TEST

# The tests of the shared trained run (conftest's `trained`), on one worker.
pytestmark = pytest.mark.xdist_group('trained')


@pytest.fixture(scope='module')
def evaluated(config, trained, tmp_path_factory):
  """A copy of the shared 2-epoch run, its checkpoint evaluated: workdir and result."""
  workdir = str(tmp_path_factory.mktemp('report') / 'w')
  shutil.copytree(trained[0], workdir)
  return workdir, evaluate.evaluate_checkpoint(experiment.build_inference(config, workdir), workdir)


def plotted_points(fig) -> dict[str, list[tuple[float, float]]]:
  """Each line's label and its (x, y) points, as drawn."""
  return {line.get_label(): [tuple(p) for p in line.get_xydata()]
          for line in fig.axes[0].get_lines()}


def test_training_draws_the_curves_of_every_epoch(evaluated):
  workdir, _ = evaluated
  records = plots.read_epochs(os.path.join(workdir, 'metrics.jsonl'))
  assert [r['epoch'] for r in records] == [1, 2]
  assert mpimg.imread(os.path.join(workdir, 'curves.png')).ndim == 3
  points = plotted_points(plots.curves_figure(records))
  for name in plots.CURVES:
    assert points[name.replace('_', ' ')] == [(r['epoch'], r[name]) for r in records]


def test_a_step_logged_twice_is_drawn_once(tmp_path):
  lines = [{'step': 3, 'epoch': 1, 'train_loss': 2.0, 'test_loss': 2.1,
            'test_accuracy': 0.1},
           {'step': 6, 'epoch': 2, 'train_loss': 9.0, 'test_loss': 9.0,
            'test_accuracy': 0.0},
           {'step': 6, 'epoch': 2, 'train_loss': 1.0, 'test_loss': 1.1,
            'test_accuracy': 0.5}]
  with open(tmp_path / 'metrics.jsonl', 'w') as f:
    f.writelines(json.dumps(line) + '\n' for line in lines)
  assert plots.read_epochs(str(tmp_path / 'metrics.jsonl')) == [lines[0], lines[2]]
  points = plotted_points(plots.curves_figure(plots.read_epochs(
      str(tmp_path / 'metrics.jsonl'))))
  assert points['test accuracy'] == [(1, 0.1), (2, 0.5)]


def test_tensorboard_gets_the_learning_rate_and_the_config(evaluated, config):
  workdir, _ = evaluated
  events = b''.join(open(os.path.join(workdir, name), 'rb').read()
                    for name in os.listdir(workdir) if name.startswith('events.'))
  assert b'learning_rate' in events
  assert f'batch_size: {config.batch_size}'.encode() in events


def test_eval_report_counts_every_example_once(evaluated):
  workdir, result = evaluated
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved == result
  assert {'accuracy', 'loss', 'num_examples', 'step'} <= saved.keys()
  matrix = np.array(saved['confusion_matrix'])
  assert matrix.shape == (10, 10)
  assert matrix.sum() == saved['num_examples'] == NUM_TEST
  assert np.trace(matrix) / matrix.sum() == pytest.approx(saved['accuracy'])
  assert list(saved['per_class_accuracy']) == list(fashion_mnist.CLASS_NAMES)
  counts = matrix.sum(axis=1)
  weighted = sum(count * accuracy for count, accuracy in
                 zip(counts, saved['per_class_accuracy'].values()))
  assert weighted / counts.sum() == pytest.approx(saved['accuracy'])
  assert mpimg.imread(os.path.join(workdir, 'confusion_matrix.png')).ndim == 3


def cell_darkness(fig, rows: int, columns: int) -> np.ndarray:
  """How dark (0 white .. 765 black) the drawn picture is in each matrix cell.

  Read from the rendered pixels, a quarter cell left of each centre to miss
  the count written there.
  """
  fig.canvas.draw()
  pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
  to_pixels = fig.axes[0].transData
  darkness = np.zeros((rows, columns))
  for (row, column), _ in np.ndenumerate(darkness):
    x, y = to_pixels.transform((column - 0.25, row))
    darkness[row, column] = 765 - pixels[pixels.shape[0] - int(y), int(x)].sum()
  return darkness


def test_the_confusion_matrix_is_darkest_on_the_diagonal_of_a_good_model():
  rng = np.random.default_rng(0)
  matrix = rng.integers(0, 20, (10, 10)) + np.diag(rng.integers(60, 100, 10))
  darkness = cell_darkness(
      plots.confusion_matrix_figure(matrix, fashion_mnist.CLASS_NAMES), 10, 10)
  off_diagonal = darkness[~np.eye(10, dtype=bool)]
  assert darkness.diagonal().min() > off_diagonal.max()
  # Darker for more: the order of the cells' darkness is the order of the counts.
  assert np.all(np.diff(darkness.ravel()[np.argsort(matrix.ravel())]) >= 0)


def test_per_class_accuracy_of_a_class_without_examples_is_none():
  matrix = np.zeros((10, 10), int)
  matrix[0, 0], matrix[0, 1] = 3, 1
  accuracy = eval_report.per_class_accuracy(matrix, fashion_mnist.CLASS_NAMES)
  assert accuracy['t-shirt/top'] == 0.75
  assert accuracy['trouser'] is None


def test_eval_prints_each_class_and_plain_progress_lines(evaluated, config, capsys):
  workdir, _ = evaluated
  result = evaluate.evaluate_checkpoint(experiment.build_inference(config, workdir), workdir)
  out, err = capsys.readouterr()
  for name in fashion_mnist.CLASS_NAMES:
    assert any(line.startswith(name) for line in out.splitlines())
  assert f'{result["accuracy"]:.4f}' in out
  assert 'test step 2/2:' in err  # 23 examples in batches of 16.
  assert '\r' not in err


def test_predict_draws_the_first_test_images_and_their_classes(evaluated, config):
  workdir, _ = evaluated
  path = predict.predict_checkpoint(experiment.build_inference(config, workdir), workdir)
  assert path == os.path.join(workdir, 'predictions.png')
  assert mpimg.imread(path).ndim == 3
  inference = experiment.build_inference(config, workdir)
  found = predict.predict(inference.p_eval_step, inference.state, inference.test,
                          inference.eval_batch_size, inference.num_predictions)
  fig = plots.predictions_figure(found['image'], found['label'], found['prediction'],
                                 fashion_mnist.CLASS_NAMES)
  drawn = [ax for ax in fig.axes if ax.get_images()]
  assert len(drawn) == config.num_predictions == 18
  names = fashion_mnist.CLASS_NAMES
  for i, ax in enumerate(drawn):
    np.testing.assert_array_equal(ax.get_images()[0].get_array(), found['image'][i, ..., 0])
    title = ax.title
    assert title.get_text() == f"{names[found['label'][i]]}\n{names[found['prediction'][i]]}"
    mistake = found['label'][i] != found['prediction'][i]
    assert title.get_color() == ('red' if mistake else 'black')
  # The examples are the first of the test set: pixel [0, 0] of example i is i.
  np.testing.assert_array_equal(found['image'][:, 0, 0, 0], np.arange(18))


def test_predict_can_show_only_mistakes(evaluated, config):
  workdir, _ = evaluated
  mistakes = config.copy_and_resolve_references()
  mistakes.predictions_only_mistakes = True
  mistakes.num_predictions = 5
  inference = experiment.build_inference(mistakes, workdir)
  found = predict.predict(inference.p_eval_step, inference.state, inference.test,
                          inference.eval_batch_size, inference.num_predictions,
                          inference.predictions_only_mistakes)
  assert len(found['label']) == 5
  assert np.all(found['label'] != found['prediction'])


def fake_metrics(loss):
  return {'loss': np.full(8, 16.0 * loss), 'count': np.full(8, 16.0)}


def test_progress_off_a_terminal_prints_whole_lines():
  stream = io.StringIO()
  bar = progress.Progress('epoch 1/2', total=25, images_per_step=16, stream=stream,
                          report_every_secs=0, enabled=True)
  for step in range(25):
    bar.update(fake_metrics(loss=2.5 - step / 10))
  bar.close()
  lines = stream.getvalue().splitlines()
  assert '\r' not in stream.getvalue()
  assert len(lines) == 26
  assert lines[9].startswith('epoch 1/2 step 10/25: ') and 'images/s' in lines[9]
  assert 'loss 1.6000' in lines[9] and 'ETA' in lines[9]
  assert 'took' in lines[-1]


def test_progress_on_a_terminal_is_a_bar():
  class Terminal(io.StringIO):
    def isatty(self):
      return True
  stream = Terminal()
  bar = progress.Progress('epoch 2/2', total=20, images_per_step=16, stream=stream,
                          enabled=True)
  for _ in range(20):
    bar.update(fake_metrics(loss=0.5))
  bar.close()
  assert 'epoch 2/2' in stream.getvalue() and 'loss 0.5000' in stream.getvalue()


def test_progress_of_other_processes_is_silent():
  stream = io.StringIO()
  bar = progress.Progress('test', total=3, images_per_step=16, stream=stream,
                          report_every_secs=0, enabled=False)
  bar.update()
  bar.close()
  assert not stream.getvalue()


def test_the_last_progress_line_counts_finished_steps_not_queued_ones():
  # Steps are queued at once and run one after another on the device: the rate
  # is about one step (16 images) per step's run time (2x for a busy machine's
  # noise), where the steps queued would give a thousand times that.
  a = jnp.full((300, 300), 1 / 300)
  step = jax.jit(lambda a: jax.lax.fori_loop(0, 30, lambda i, x: jnp.tanh(x @ a), a)[:1, 0])
  seconds_per_step = min(timed(lambda: jax.block_until_ready(step(a))) for _ in range(3))
  stream = io.StringIO()
  bar = progress.Progress('epoch 1/1', total=5, images_per_step=16, stream=stream,
                          report_every_secs=1e9, enabled=True)
  for _ in range(5):
    bar.update({'loss': step(a), 'count': np.ones(1)})
  bar.close()
  rate = float(re.search(r'([\d.]+) images/s', stream.getvalue()).group(1))
  assert rate <= 2 * 16 / seconds_per_step, stream.getvalue()


def timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def test_a_thousand_classes_are_reported_as_their_most_confused_pairs(tmp_path, capsys):
  rng = np.random.default_rng(0)
  names = [f'class{i}' for i in range(1000)]
  matrix = np.diag(rng.integers(40, 50, 1000)) + (rng.random((1000, 1000)) < 0.002)
  matrix[7, 3] = 30  # class7 taken for class3 most often, and class7 the worst.
  matrix[7, 7] = 5
  matrix[500, 9] = 20
  result = {'step': 1, 'checkpoint': 'ckpt', 'loss': 1.0, 'accuracy': 0.9,
            'num_examples': int(matrix.sum()), 'confusion_matrix': matrix.tolist(),
            'per_class_accuracy': eval_report.per_class_accuracy(matrix, names)}
  eval_report.write(result, names, str(tmp_path))
  pairs = json.loads((tmp_path / 'eval.json').read_text())['most_confused']
  assert len(pairs) == eval_report.NUM_CONFUSED_PAIRS
  assert pairs[:2] == [{'true': 'class7', 'predicted': 'class3', 'count': 30},
                       {'true': 'class500', 'predicted': 'class9', 'count': 20}]
  assert all(a['count'] >= b['count'] for a, b in zip(pairs, pairs[1:]))
  assert all(pair['true'] != pair['predicted'] for pair in pairs)
  # A bar for each pair, not a 1000 x 1000 picture.
  height, width = mpimg.imread(tmp_path / 'confusion_matrix.png').shape[:2]
  assert width < 1000 and height < 1000
  table = capsys.readouterr().out.splitlines()[1:]
  assert len(table) == 1 + eval_report.MAX_DRAWN_CLASSES + 1  # Header, classes, total.
  assert table[1].split()[::2] == ['class7', f"{result['per_class_accuracy']['class7']:.4f}"]
