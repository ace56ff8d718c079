"""Training speed of the chapter's PyTorch GoogLeNet, as a reference for the JAX step.

The model is d2l's code ("Multi-Branch Networks (GoogLeNet)"): the same Inception
channels, b1-b5, AdaptiveAvgPool2d, Linear, Xavier-uniform weights. It trains
with plain SGD (lr 0.01) on random float32 images, channels_last. PyTorch lives
in its own virtualenv, not in requirements.txt:

  python3 -m venv /tmp/torch-venv
  /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
  /tmp/torch-venv/bin/python benchmarks/pytorch_reference.py --batch_size=128

`--flops_per_step` takes XLA's count from benchmarks/benchmark.py's JSON so both
frameworks' FLOP/s use one count; without it PyTorch's FlopCounterMode counts.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils import flop_counter


class Inception(nn.Module):
  """d2l's Inception block: four branches concatenated on the channel axis."""

  def __init__(self, c1, c2, c3, c4):
    super().__init__()
    self.b1_1 = nn.LazyConv2d(c1, kernel_size=1)
    self.b2_1 = nn.LazyConv2d(c2[0], kernel_size=1)
    self.b2_2 = nn.LazyConv2d(c2[1], kernel_size=3, padding=1)
    self.b3_1 = nn.LazyConv2d(c3[0], kernel_size=1)
    self.b3_2 = nn.LazyConv2d(c3[1], kernel_size=5, padding=2)
    self.b4_1 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    self.b4_2 = nn.LazyConv2d(c4, kernel_size=1)

  def forward(self, x):
    b1 = F.relu(self.b1_1(x))
    b2 = F.relu(self.b2_2(F.relu(self.b2_1(x))))
    b3 = F.relu(self.b3_2(F.relu(self.b3_1(x))))
    b4 = F.relu(self.b4_2(self.b4_1(x)))
    return torch.cat((b1, b2, b3, b4), dim=1)


def googlenet(num_classes: int = 10) -> nn.Sequential:
  """d2l's GoogLeNet: b1, b2 (stem), b3-b5 (nine Inception blocks), Linear head."""
  pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
  b1 = nn.Sequential(nn.LazyConv2d(64, kernel_size=7, stride=2, padding=3),
                     nn.ReLU(), pool())
  b2 = nn.Sequential(nn.LazyConv2d(64, kernel_size=1), nn.ReLU(),
                     nn.LazyConv2d(192, kernel_size=3, padding=1), nn.ReLU(),
                     pool())
  b3 = nn.Sequential(Inception(64, (96, 128), (16, 32), 32),
                     Inception(128, (128, 192), (32, 96), 64), pool())
  b4 = nn.Sequential(Inception(192, (96, 208), (16, 48), 64),
                     Inception(160, (112, 224), (24, 64), 64),
                     Inception(128, (128, 256), (24, 64), 64),
                     Inception(112, (144, 288), (32, 64), 64),
                     Inception(256, (160, 320), (32, 128), 128), pool())
  b5 = nn.Sequential(Inception(256, (160, 320), (32, 128), 128),
                     Inception(384, (192, 384), (48, 128), 128),
                     nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
  return nn.Sequential(b1, b2, b3, b4, b5, nn.LazyLinear(num_classes))


def init_cnn(module: nn.Module) -> None:
  """d2l's `init_cnn`: Xavier-uniform weights for convs and linear layers."""
  if isinstance(module, (nn.Linear, nn.Conv2d)):
    nn.init.xavier_uniform_(module.weight)


def create_model(image_size: int) -> nn.Module:
  """The model with its lazy shapes resolved, initialised, channels_last."""
  model = googlenet()
  model(torch.zeros(1, 1, image_size, image_size))
  model.apply(init_cnn)
  return model.to(memory_format=torch.channels_last)


def train_step(model, optimizer, images, labels) -> torch.Tensor:
  """One SGD step; returns the loss."""
  optimizer.zero_grad()
  loss = F.cross_entropy(model(images), labels)
  loss.backward()
  optimizer.step()
  return loss


def count_flops(model, optimizer, images, labels) -> int:
  """FLOPs of one training step by PyTorch's FlopCounterMode (forward + backward)."""
  with flop_counter.FlopCounterMode(display=False) as counter:
    train_step(model, optimizer, images, labels)
  return counter.get_total_flops()


def step_durations(model, optimizer, images, labels, num_steps: int) -> list[float]:
  """Seconds of each of `num_steps` steps (the CPU runs them synchronously)."""
  durations = []
  for _ in range(num_steps):
    start = time.perf_counter()
    train_step(model, optimizer, images, labels).item()
    durations.append(time.perf_counter() - start)
  return durations


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=96)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--flops_per_step', type=float, default=0,
                      help='FLOPs of one training step; 0: count them here.')
  parser.add_argument('--json_out', default='')
  return parser.parse_args()


def main():
  args = parse_args()
  torch.manual_seed(0)
  model = create_model(args.image_size)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
  images = torch.rand(args.batch_size, 1, args.image_size, args.image_size
                      ).to(memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (args.batch_size,))
  counted_flops = count_flops(model, optimizer, images, labels)
  flops = args.flops_per_step or counted_flops
  step_durations(model, optimizer, images, labels, args.warmup)
  rates = [args.batch_size / d for d in
           step_durations(model, optimizer, images, labels, args.steps)]
  result = {
      'torch': torch.__version__, 'threads': torch.get_num_threads(),
      'batch_size': args.batch_size, 'image_size': args.image_size,
      'images_per_s': {'median': statistics.median(rates), 'min': min(rates),
                       'max': max(rates), 'steps': len(rates)},
      'flops_per_step': flops, 'flop_counter_flops_per_step': counted_flops,
      'achieved_flops_per_s': flops * statistics.median(rates) / args.batch_size,
  }
  print(f"PyTorch {result['torch']}, {result['threads']} threads, batch "
        f"{args.batch_size}, {args.image_size}x{args.image_size}, float32, "
        'channels_last')
  print(f"train images/s   {result['images_per_s']['median']:.1f} "
        f"(min {min(rates):.1f}, max {max(rates):.1f}, {len(rates)} steps)")
  print(f"GFLOP per step   {flops / 1e9:.1f} "
        f"({'passed in' if args.flops_per_step else 'FlopCounterMode'}; "
        f'FlopCounterMode counts {counted_flops / 1e9:.1f})')
  print(f"achieved GFLOP/s {result['achieved_flops_per_s'] / 1e9:.1f}")
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
