"""The pictures a run leaves in WORKDIR: curves, confusion matrix, predictions.

Drawn with matplotlib's Agg backend, so they need no display (a TPU VM has none).
Paths may be local or gs:// URLs (etils.epath).
"""

import io
import json
from typing import Sequence

from etils import epath
import matplotlib
matplotlib.use('Agg')
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
from matplotlib import ticker  # pylint: disable=g-import-not-at-top
import numpy as np

CURVES = ('train_loss', 'test_loss', 'test_accuracy')


def read_epochs(metrics_path: str | epath.Path) -> list[dict[str, float]]:
  """The per-epoch records of metrics.jsonl, one per step, in step order.

  A run that resumed from an older checkpoint than its newest (which was damaged)
  logs those epochs again; the later record wins.
  """
  by_step = {}
  for line in epath.Path(metrics_path).read_text().splitlines():
    record = json.loads(line)
    if {'epoch', *CURVES} <= record.keys():
      by_step[record['step']] = record
  return [by_step[step] for step in sorted(by_step)]


def write_curves(workdir: str) -> str:
  """Draws WORKDIR/metrics.jsonl as WORKDIR/curves.png, as the chapter's figure.

  Returns:
    The path of the PNG.
  """
  workdir = epath.Path(workdir)
  records = read_epochs(workdir / 'metrics.jsonl')
  return _save(curves_figure(records), workdir / 'curves.png')


def curves_figure(records: Sequence[dict[str, float]]):
  """Train loss, test loss and test accuracy against the epoch."""
  fig, ax = plt.subplots(figsize=(3.5, 2.5), dpi=100)
  epochs = [r['epoch'] for r in records]
  for name, style in zip(CURVES, ('-', 'm--', 'g-.')):
    # Dots too, so that a run of one or two epochs still shows its values.
    ax.plot(epochs, [r[name] for r in records], style, marker='.',
            label=name.replace('_', ' '))
  ax.set_xlabel('epoch')
  ax.set_xlim(0.5, max(epochs, default=1) + 0.5)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
  ax.grid(True)
  ax.legend()
  return fig


def write_confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                           path: str | epath.Path) -> str:
  """Draws the confusion matrix as `path`; returns the path."""
  return _save(confusion_matrix_figure(matrix, class_names), path)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]],
                            class_names: Sequence[str]):
  """Counts of (true class, predicted class), darker for more, with each count."""
  matrix = np.asarray(matrix)
  fig, ax = plt.subplots(figsize=(6, 5.5), dpi=80)
  image = ax.imshow(matrix, cmap='Blues')
  ticks = np.arange(len(class_names))
  ax.set_xticks(ticks, class_names, rotation=45, ha='right')
  ax.set_yticks(ticks, class_names)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  for (true, pred), count in np.ndenumerate(matrix):
    ax.text(pred, true, str(count), ha='center', va='center', fontsize=7,
            color='white' if count > matrix.max() / 2 else 'black')
  fig.colorbar(image, ax=ax)
  return fig


def write_confused_pairs(pairs: Sequence[dict], path: str | epath.Path) -> str:
  """Draws `confused_pairs_figure` as `path`; returns the path."""
  return _save(confused_pairs_figure(pairs), path)


def confused_pairs_figure(pairs: Sequence[dict]):
  """The most confused (true, predicted) pairs as bars, the most at the top.

  Args:
    pairs: eval_report.most_confused's {'true', 'predicted', 'count'}.
  """
  fig, ax = plt.subplots(figsize=(6, 1 + 0.25 * max(len(pairs), 1)), dpi=80)
  ax.barh(range(len(pairs)), [pair['count'] for pair in pairs])
  ax.set_yticks(range(len(pairs)),
                [f"{pair['true']} \u2192 {pair['predicted']}" for pair in pairs], fontsize=7)
  ax.invert_yaxis()
  ax.set_xlabel('test images (true \u2192 predicted)')
  ax.set_title('most confused classes')
  fig.tight_layout()
  return fig


def write_predictions(images: np.ndarray, labels: Sequence[int],
                      predictions: Sequence[int], class_names: Sequence[str],
                      path: str) -> str:
  """Draws `predictions_figure` as `path`; returns the path."""
  return _save(predictions_figure(images, labels, predictions, class_names), path)


def predictions_figure(images: np.ndarray, labels: Sequence[int],
                       predictions: Sequence[int], class_names: Sequence[str],
                       num_columns: int = 9):
  """A grid of images titled 'true\\npred', as the chapter shows; mistakes in red.

  Args:
    images: uint8 [N, H, W, C]: gray for one channel, colour for three.
    labels: the true classes.
    predictions: the predicted classes.
    class_names: the name of each class.
    num_columns: images per row.
  """
  num_rows = max(1, -(-len(images) // num_columns))
  fig, axes = plt.subplots(num_rows, num_columns, squeeze=False,
                           figsize=(1.2 * num_columns, 1.5 * num_rows), dpi=80)
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i >= len(images):
      continue
    ax.imshow(images[i][..., 0] if images.shape[-1] == 1 else images[i], cmap='gray')
    ax.set_title(f'{class_names[labels[i]]}\n{class_names[predictions[i]]}',
                 fontsize=8, color='black' if labels[i] == predictions[i] else 'red')
  return fig


def _save(fig, path: str | epath.Path) -> str:
  """Writes `fig` as `path`, in the format its suffix names (.png)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, format=path.suffix.lstrip('.'))
  plt.close(fig)
  path.write_bytes(image.getvalue())
  return str(path)
