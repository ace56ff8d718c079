"""What `--mode=eval` leaves: eval.json, a per-class table and the confusion matrix.

Past MAX_DRAWN_CLASSES (ImageNet's 1000), the picture shows the most confused
pairs of classes instead of the matrix, and the table the least accurate classes.
"""

import json
from typing import Any, Sequence

from etils import epath
import numpy as np

from googlenet_jax import plots

# The most classes drawn as a matrix and listed one by one.
MAX_DRAWN_CLASSES = 20
# The (true, predicted) pairs eval.json lists, most often confused first.
NUM_CONFUSED_PAIRS = 20


def per_class_accuracy(matrix: Sequence[Sequence[int]],
                       class_names: Sequence[str]) -> dict[str, float | None]:
  """Accuracy of each class (None for a class with no examples), by class name.

  Args:
    matrix: counts of (true class, predicted class).
    class_names: the name of each class, in label order.
  """
  matrix = np.asarray(matrix)
  counts = matrix.sum(axis=1)
  return {name: float(matrix[i, i] / counts[i]) if counts[i] else None
          for i, name in enumerate(class_names)}


def most_confused(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                  num_pairs: int = NUM_CONFUSED_PAIRS) -> list[dict[str, Any]]:
  """The `num_pairs` most frequent mistakes: {'true', 'predicted', 'count'}, most first."""
  matrix = np.array(matrix)
  np.fill_diagonal(matrix, 0)
  flat = np.argsort(-matrix, axis=None, kind='stable')[:num_pairs]
  pairs = [np.unravel_index(i, matrix.shape) for i in flat]
  return [{'true': class_names[t], 'predicted': class_names[p], 'count': int(matrix[t, p])}
          for t, p in pairs if matrix[t, p]]


def format_per_class(result: dict[str, Any]) -> str:
  """A plain-text table: each class's examples and accuracy, then the total.

  Past MAX_DRAWN_CLASSES classes, only the MAX_DRAWN_CLASSES least accurate.
  """
  counts = np.asarray(result['confusion_matrix']).sum(axis=1)
  rows = list(zip(result['per_class_accuracy'].items(), counts))
  lines = [f'{"class":<14}{"examples":>10}{"accuracy":>10}']
  if len(rows) > MAX_DRAWN_CLASSES:
    rows = sorted((row for row in rows if row[0][1] is not None),
                  key=lambda row: row[0][1])[:MAX_DRAWN_CLASSES]
    lines[0] += f'   (the {len(rows)} least accurate of {len(counts)} classes)'
  for (name, accuracy), count in rows:
    shown = '-' if accuracy is None else f'{accuracy:.4f}'
    lines.append(f'{name:<14}{count:>10,}{shown:>10}')
  lines.append(f'{"all":<14}{result["num_examples"]:>10,}{result["accuracy"]:>10.4f}')
  return '\n'.join(lines)


def write(result: dict[str, Any], class_names: Sequence[str], workdir: str) -> None:
  """Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png; prints the table.

  `result` gains 'most_confused'.

  WORKDIR may be a local path or a gs:// URL.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  result['most_confused'] = most_confused(result['confusion_matrix'], class_names)
  (workdir / 'eval.json').write_text(json.dumps(result, indent=2))
  if len(class_names) > MAX_DRAWN_CLASSES:
    plots.write_confused_pairs(result['most_confused'], workdir / 'confusion_matrix.png')
  else:
    plots.write_confusion_matrix(result['confusion_matrix'], class_names,
                                 workdir / 'confusion_matrix.png')
  print(f'Checkpoint at step {result["step"]} ({result["checkpoint"]}): test loss '
        f'{result["loss"]:.4f}\n'
        f'{format_per_class(result)}')
