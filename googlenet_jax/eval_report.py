"""What `--mode=eval` leaves: eval.json, a per-class table and the confusion matrix."""

import json
from typing import Any, Sequence

from etils import epath
import numpy as np

from googlenet_jax import plots


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


def format_per_class(result: dict[str, Any]) -> str:
  """A plain-text table: each class's examples and accuracy, then the total."""
  counts = np.asarray(result['confusion_matrix']).sum(axis=1)
  lines = [f'{"class":<14}{"examples":>10}{"accuracy":>10}']
  for (name, accuracy), count in zip(result['per_class_accuracy'].items(), counts):
    shown = '-' if accuracy is None else f'{accuracy:.4f}'
    lines.append(f'{name:<14}{count:>10,}{shown:>10}')
  lines.append(f'{"all":<14}{result["num_examples"]:>10,}{result["accuracy"]:>10.4f}')
  return '\n'.join(lines)


def write(result: dict[str, Any], class_names: Sequence[str], workdir: str) -> None:
  """Writes WORKDIR/eval.json and WORKDIR/confusion_matrix.png; prints the table.

  WORKDIR may be a local path or a gs:// URL.
  """
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'eval.json').write_text(json.dumps(result, indent=2))
  plots.write_confusion_matrix(result['confusion_matrix'], class_names,
                               workdir / 'confusion_matrix.png')
  print(f'Checkpoint at step {result["step"]} ({result["checkpoint"]}): test loss '
        f'{result["loss"]:.4f}\n'
        f'{format_per_class(result)}')
