"""How many host cores keep the chips fed: the streamed JPEG pipeline's images/s per core.

Run from the repository root. torchvision and the JPEG decoders other than PIL are
not in requirements.txt; give them a venv of their own (PyTurboJPEG 1.x works with
Debian 12's libjpeg-turbo 2.1, 2.x needs libjpeg-turbo 3):

  apt-get install libturbojpeg0
  python3 -m venv /work/bench-venv
  /work/bench-venv/bin/pip install -r requirements.txt torch==2.14.1 torchvision==0.29.1 \
      simplejpeg==1.9.0 PyTurboJPEG==1.8.3 opencv-python-headless==5.0.0.93
  /work/bench-venv/bin/python -m benchmarks.host_pipeline --cache_dir=/tmp/host_pipeline

Once, it draws --num_images photograph-like JPEGs of ImageNet's sizes (about
400x350 pixels and 110 KB on average, a few grayscale) and prepares them in
--cache_dir as a TFDS array_record dataset, as `tfds build` would. Then, on the
same JPEG bytes, taking turns (this codebase, torchvision, this codebase, ...):

- this codebase's training pipeline, `tfds_images.StreamedSource.read` (grain,
  `read_batch`: PIL decode at a reduced scale, the random-resized crop to 224, a
  flip, uint8 batches), in this process pinned to one core, and with a worker
  per core;
- torchvision's reference: a `torch.utils.data.DataLoader` over the same bytes,
  PIL decode, `RandomResizedCrop(224)`, `RandomHorizontalFlip()`, `PILToTensor()`
  (uint8, as ours: `ToTensor` would add a float conversion), with 0 workers on
  one core and a worker per core, the same batch size;
- where ours spends a batch's time on one core (read, decode, crop and resize,
  flip and batching), and the decoders alone (PIL, simplejpeg, PyTurboJPEG,
  OpenCV, each where installed), full size and at the reduced scale a training
  crop allows.

Last, the host cores a TPU host needs for --chip_images_per_sec. Other work on
the machine slows every number: the load average is printed with each.
"""

import contextlib
import functools
import io
import math
import os
import statistics
import time
from typing import Callable, Iterator

from absl import app
from absl import flags
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
import tensorflow_datasets as tfds

from googlenet_jax.data import jpeg_builder
from googlenet_jax.data import tfds_images
from googlenet_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_images', 3000, 'JPEGs to draw and prepare (once per count).')
flags.DEFINE_string('cache_dir', '/tmp/host_pipeline',
                    'Where the prepared JPEGs are kept, one dataset per --num_images.')
flags.DEFINE_integer('batch_size', 128, 'Images per batch, for both pipelines.')
flags.DEFINE_integer('batches', 24, 'Batches timed per measurement, after the first few.')
flags.DEFINE_integer('rounds', 2, 'Turns of every measurement.')
flags.DEFINE_integer('workers', os.cpu_count(), "The all-cores runs' worker processes.")
flags.DEFINE_integer('image_size', 224, 'The crop side.')
flags.DEFINE_bool('torchvision', True, 'Also time the torchvision reference.')
flags.DEFINE_integer('profile_images', 256, 'Images of the stage profile and decoder runs; '
                     '0 skips both.')
flags.DEFINE_list('chip_images_per_sec', ['v5litepod-8=20000-50000'],
                  'HOST=IMAGES_PER_SEC or HOST=LOW-HIGH: what the chips of one TPU host '
                  'consume, e.g. from --mode=compile; the cores it needs are printed.')

IMAGENET_CLASSES = 1000
GRAYSCALE_SHARE = 0.02  # ImageNet's training set: about 1.7% grayscale JPEGs.
JPEG_QUALITY = 90
DATASET_NAME = 'host_pipeline_photos'


# The JPEGs.

def imagenet_size(rng: np.random.Generator) -> tuple[int, int]:
  """(height, width) drawn like ImageNet's: mostly 500 px on the long side, 4:3, landscape."""
  if rng.random() < 0.025:
    long_side = int(rng.integers(600, 1200))
  elif rng.random() < 0.6:
    long_side = 500
  else:
    long_side = int(rng.integers(150, 500))
  aspect = rng.choice([4 / 3, 3 / 2, 1.0, 16 / 9, rng.uniform(1, 2)],
                      p=[0.5, 0.15, 0.1, 0.1, 0.15])
  short_side = max(32, round(long_side / aspect))
  return (short_side, long_side) if rng.random() < 0.75 else (long_side, short_side)


def photograph(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """uint8 [height, width, 3]: a gradient, soft blobs, shapes, blur, texture and grain.

  Smooth areas, edges and fine texture, so that a JPEG of it is about as large,
  and as costly to decode, as a photograph of its size.
  """
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  angle = rng.uniform(0, 2 * np.pi)
  along = np.cos(angle) * xx / width + np.sin(angle) * yy / height
  start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
  pixels = start + (end - start) * along[..., None]
  coarse = rng.integers(0, 120, (rng.integers(3, 8), rng.integers(3, 8), 3), np.uint8)
  pixels += np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC),
                       np.float32) - 60
  image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for _ in range(rng.integers(4, 16)):
    x0, x1 = sorted(rng.integers(0, width, 2))
    y0, y1 = sorted(rng.integers(0, height, 2))
    shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
    shape((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
  pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2))), np.float32)
  noise = rng.uniform(25, 55)  # Varies the file sizes as scenes do.
  texture = rng.normal(0, noise, (height // 2 + 1, width // 2 + 1)).astype(np.float32)
  pixels += np.asarray(Image.fromarray(texture, 'F').resize((width, height), Image.BILINEAR))[
      ..., None]
  pixels += rng.normal(0, noise, pixels.shape).astype(np.float32)
  return np.clip(pixels, 0, 255).astype(np.uint8)


def photographs(num_images: int) -> Iterator[tuple[bytes, int]]:
  """(JPEG bytes, label) of `num_images` photographs, the same ones on every call."""
  rng = np.random.default_rng(0)
  for i in range(num_images):
    image = Image.fromarray(photograph(rng, *imagenet_size(rng)))
    if rng.random() < GRAYSCALE_SHARE:
      image = image.convert('L')
    out = io.BytesIO()
    image.save(out, format='JPEG', quality=JPEG_QUALITY)
    yield out.getvalue(), i % IMAGENET_CLASSES


def photograph_source(cache_dir: str, num_images: int):
  """The prepared photographs' data source, JPEG bytes undecoded; prepares them once."""
  data_dir = os.path.join(cache_dir, str(num_images))
  try:
    prepared = tfds_images.builder(DATASET_NAME, data_dir)
  except UserError:
    print(f'Drawing {num_images} JPEGs into {data_dir} (once)...', flush=True)
    jpeg_builder.prepare(DATASET_NAME, data_dir,
                         [f'class_{i}' for i in range(IMAGENET_CLASSES)],
                         {'train': functools.partial(photographs, num_images)})
    prepared = tfds_images.builder(DATASET_NAME, data_dir)
  return prepared.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})


def describe_jpegs(data_source) -> str:
  """Their count, mean size in pixels and KB, and the grayscale share, as one line."""
  headers = []
  for example in data_source.__getitems__(range(len(data_source))):
    image = Image.open(io.BytesIO(example['image']))
    headers.append((image.width, image.height, len(example['image']), image.mode == 'L'))
  width, height, size, gray = np.mean(headers, axis=0)
  return (f'{len(headers)} JPEGs, mean {width:.0f}x{height:.0f} px, {size / 1e3:.0f} KB '
          f'(quality {JPEG_QUALITY}), {100 * gray:.1f}% grayscale')


# The pipelines, timed.

@contextlib.contextmanager
def on_cores(cores: set[int]):
  """This process (and the workers it starts) on `cores` only."""
  before = os.sched_getaffinity(0)
  os.sched_setaffinity(0, cores)
  try:
    yield
  finally:
    os.sched_setaffinity(0, before)


def index_batches(num_examples: int, batch_size: int, num_batches: int,
                  seed: int) -> list[np.ndarray]:
  """`num_batches` batches of a shuffled epoch, cycled where it is shorter."""
  order = np.random.default_rng(seed).permutation(num_examples)
  return [np.take(order, range(b * batch_size, (b + 1) * batch_size), mode='wrap')
          for b in range(num_batches)]


def images_per_sec(batches: Iterator, batch_size: int, workers: int) -> float:
  """Images/s after the first batches, from then to the last batch's arrival.

  The first two batches of each worker (and two more) are left out: they
  include the workers' start-up and fill the read-ahead buffers.
  """
  for _ in range(skipped_batches(workers)):
    next(batches)
  start = time.perf_counter()
  count = sum(1 for _ in batches)
  return count * batch_size / (time.perf_counter() - start)


def skipped_batches(workers: int) -> int:
  return 2 * workers + 2


def ours(data_source, workers: int, indices: list[np.ndarray], epoch: int) -> float:
  source = tfds_images.StreamedSource(data_source, 'train', FLAGS.image_size, workers)
  batches = source.read(indices, train=True, seed=0, epoch=epoch)
  with contextlib.closing(batches):
    return images_per_sec(batches, FLAGS.batch_size, workers)


class TorchvisionJpegs:
  """A map-style torch Dataset of the same JPEG bytes, torchvision's training transform."""

  def __init__(self, data_source, size: int):
    from torchvision import transforms  # pylint: disable=g-import-not-at-top
    self._data_source = data_source
    self._transform = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
        transforms.PILToTensor()])

  def __len__(self):
    return len(self._data_source)

  def __getitem__(self, index):
    example = self._data_source[index]
    image = Image.open(io.BytesIO(example['image'])).convert('RGB')
    return self._transform(image), example['label']


def torchvision(data_source, workers: int, indices: list[np.ndarray], epoch: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(epoch)
  loader = torch.utils.data.DataLoader(
      TorchvisionJpegs(data_source, FLAGS.image_size), batch_size=FLAGS.batch_size,
      sampler=np.concatenate(indices).tolist(), num_workers=workers)
  return images_per_sec(iter(loader), FLAGS.batch_size, workers)


def take_turns(runs: dict[str, Callable[[int], float]], rounds: int) -> dict[str, list[float]]:
  """Every run once per round, in turn, so a busy machine slows them alike."""
  rates = {name: [] for name in runs}
  for round_ in range(rounds):
    for name, run in runs.items():
      rates[name].append(run(round_))
      print(f'  round {round_ + 1}, {name}: {rates[name][-1]:.1f} images/s '
            f'(load {os.getloadavg()[0]:.1f})', flush=True)
  return rates


def pipelines(data_source) -> dict[str, list[float]]:
  """images/s of each pipeline on one core and on all, taking turns."""
  indices = index_batches(len(data_source), FLAGS.batch_size,
                          FLAGS.batches + skipped_batches(FLAGS.workers), seed=0)
  one_core = {min(os.sched_getaffinity(0))}
  kinds = {'ours': ours}
  if FLAGS.torchvision:
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(1)  # Its collation in this process, on the one core.
    kinds['torchvision'] = torchvision
  runs = {}
  for name, run in kinds.items():
    def pinned(epoch, run=run):
      with on_cores(one_core):
        return run(data_source, 0, indices, epoch)
    runs[f'{name}, 1 core'] = pinned
  for name, run in kinds.items():
    runs[f'{name}, {FLAGS.workers} workers'] = functools.partial(
        run, data_source, FLAGS.workers, indices)
  for run in kinds.values():  # Untimed: imports and first calls.
    run(data_source, 0, indices[:skipped_batches(0) + 1], epoch=0)
  return take_turns(runs, FLAGS.rounds)


# Where the time goes, and the decoders.

def stage_seconds(data_source, num_images: int) -> dict[str, float]:
  """Seconds per image of each step of `read_batch`'s training path, in this process.

  The steps are `tfds_images.decode_crop`'s, timed one by one.
  """
  size = FLAGS.image_size
  seconds = dict.fromkeys(('read', 'decode', 'crop and resize', 'flip and batch'), 0.0)
  batch = np.zeros((num_images, size, size, 3), np.uint8)
  start = time.perf_counter()
  examples = data_source.__getitems__(range(num_images))
  seconds['read'] = time.perf_counter() - start
  for row, example in enumerate(examples):
    rng = tfds_images.example_rng(0, 0, row)
    t0 = time.perf_counter()
    image = Image.open(io.BytesIO(example['image']))
    width, height = image.size
    top, left, h, w = tfds_images.random_crop_box(rng, height, width)
    image.draft('RGB', (math.ceil(width * size / w), math.ceil(height * size / h)))
    image.load()
    t1 = time.perf_counter()
    scale_x, scale_y = image.size[0] / width, image.size[1] / height
    box = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
    if image.mode != 'RGB':
      image = image.convert('RGB')
    image = image.resize((size, size), Image.BILINEAR, box=box)
    t2 = time.perf_counter()
    pixels = np.asarray(image, np.uint8)
    batch[row] = pixels[:, ::-1] if rng.random() < 0.5 else pixels
    seconds['decode'] += t1 - t0
    seconds['crop and resize'] += t2 - t1
    seconds['flip and batch'] += time.perf_counter() - t2
  start = time.perf_counter()
  tfds_images.read_batch(data_source, size, True, 0, 0, np.arange(num_images))
  seconds['read_batch, whole'] = time.perf_counter() - start
  return {stage: s / num_images for stage, s in seconds.items()}


def reduction(width: int, height: int, box: tuple[int, int, int, int], size: int) -> int:
  """1, 2, 4 or 8: the largest that leaves the crop `box` `size` px a side, as PIL's draft."""
  _, _, h, w = box
  need_w, need_h = math.ceil(width * size / w), math.ceil(height * size / h)
  return max(r for r in (1, 2, 4, 8) if r <= min(width // need_w, height // need_h) or r == 1)


def decoders() -> dict[str, Callable[[bytes, int, int, int], np.ndarray]]:
  """RGB decoders, those installed: (JPEG bytes, width, height, reduction) -> array."""

  def pil(data, width, height, r):
    image = Image.open(io.BytesIO(data))
    if r > 1:
      image.draft('RGB', (math.ceil(width / r), math.ceil(height / r)))
    return np.asarray(image.convert('RGB'))
  found = {'PIL': pil}
  try:
    import simplejpeg  # pylint: disable=g-import-not-at-top
    found['simplejpeg'] = lambda data, width, height, r: simplejpeg.decode_jpeg(
        data, 'RGB', min_width=math.ceil(width / r), min_height=math.ceil(height / r))
  except ImportError:
    pass
  try:
    import turbojpeg  # pylint: disable=g-import-not-at-top
    jpeg = turbojpeg.TurboJPEG()
    found['PyTurboJPEG'] = lambda data, width, height, r: jpeg.decode(
        data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, r))
  except (ImportError, RuntimeError):  # RuntimeError: no libturbojpeg of its version.
    pass
  try:
    import cv2  # pylint: disable=g-import-not-at-top
    cv2.setNumThreads(1)
    flag = {1: cv2.IMREAD_COLOR_RGB, 2: cv2.IMREAD_REDUCED_COLOR_2,
            4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

    def opencv(data, width, height, r):
      del width, height
      image = cv2.imdecode(np.frombuffer(data, np.uint8), flag[r])
      # OpenCV's reduced reads are BGR: seen as RGB with no copy (a resize reads the view).
      return image if r == 1 else image[..., ::-1]
    found['OpenCV'] = opencv
  except ImportError:
    pass
  return found


def decode_rates(data_source, num_images: int) -> tuple[dict[str, list[float]], float]:
  """Decode-only images/s of each decoder, full size and reduced, on one core, in turns.

  Returns:
    (the rates by decoder and form, the share of the images that a training
    crop lets decode at a reduced scale).
  """
  jobs = []
  for index, example in enumerate(data_source.__getitems__(range(num_images))):
    image = Image.open(io.BytesIO(example['image']))
    box = tfds_images.random_crop_box(tfds_images.example_rng(0, 0, index),
                                      image.height, image.width)
    jobs.append((example['image'], image.width, image.height,
                 reduction(image.width, image.height, box, FLAGS.image_size)))
  runs = {}
  for name, decode in decoders().items():
    for reduced in (False, True):
      def run(round_, decode=decode, reduced=reduced):
        del round_
        start = time.perf_counter()
        for data, width, height, r in jobs:
          decode(data, width, height, r if reduced else 1)
        return len(jobs) / (time.perf_counter() - start)
      runs[f'{name}, {"reduced" if reduced else "full"}'] = run
  with on_cores({min(os.sched_getaffinity(0))}):
    rates = take_turns(runs, FLAGS.rounds)
  return rates, np.mean([r > 1 for *_, r in jobs])


# The table.

def host_needs(specs: list[str]) -> list[tuple[str, float, float]]:
  """(host, low, high) images/s from 'HOST=N' or 'HOST=LOW-HIGH' items."""
  needs = []
  for spec in specs:
    host, _, rate = spec.partition('=')
    low, _, high = rate.partition('-')
    try:
      needs.append((host, float(low), float(high or low)))
    except ValueError as e:
      raise app.UsageError(f'--chip_images_per_sec: {spec!r} is not HOST=N or '
                           'HOST=LOW-HIGH') from e
  return needs


def format_pipelines(rates: dict[str, list[float]], workers: int) -> str:
  """Median images/s on one core and on all, per core, and ours / torchvision."""
  median = {name: statistics.median(r) for name, r in rates.items()}
  lines = [f'| pipeline | 1 core, in process | {workers} workers | per core at {workers} |',
           '|---|---|---|---|']
  names = ['ours'] + (['torchvision'] if f'torchvision, 1 core' in median else [])
  for name in names:
    one, every = median[f'{name}, 1 core'], median[f'{name}, {workers} workers']
    runs = ', '.join(f'{r:.0f}' for r in rates[f'{name}, 1 core'])
    lines.append(f'| {name} | {one:.1f} ({runs}) | {every:.1f} | {every / workers:.1f} |')
  if 'torchvision' in names:
    one = median['ours, 1 core'] / median['torchvision, 1 core']
    every = median[f'ours, {workers} workers'] / median[f'torchvision, {workers} workers']
    lines.append(f'| ours / torchvision | **{one:.2f}** | {every:.2f} | {every:.2f} |')
  return '\n'.join(lines)


def format_cores_needed(needs, per_core: float, per_core_workers: float) -> str:
  lines = ['| TPU host | images/s needed | cores at 1-core rate | cores at workers\' rate |',
           '|---|---|---|---|']
  for host, low, high in needs:
    needed = f'{low:,.0f}' if low == high else f'{low:,.0f}-{high:,.0f}'
    cores = lambda rate: (f'{math.ceil(low / rate)}' if low == high else
                          f'{math.ceil(low / rate)}-{math.ceil(high / rate)}')
    lines.append(f'| {host} | {needed} | {cores(per_core)} | {cores(per_core_workers)} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  needs = host_needs(FLAGS.chip_images_per_sec)
  data_source = photograph_source(FLAGS.cache_dir, FLAGS.num_images)
  print(describe_jpegs(data_source))
  print(f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, {os.cpu_count()} cores, '
        f'load {os.getloadavg()[0]:.1f}, batch {FLAGS.batch_size}, {FLAGS.batches} timed '
        f'batches per run, {FLAGS.rounds} rounds', flush=True)
  rates = pipelines(data_source)
  if FLAGS.profile_images:
    num_images = min(FLAGS.profile_images, len(data_source))
    with on_cores({min(os.sched_getaffinity(0))}):
      stages = stage_seconds(data_source, num_images)
    print(f'\nOne core, ms per image over {num_images} images (load '
          f'{os.getloadavg()[0]:.1f}):')
    for stage, s in stages.items():
      print(f'  {stage:<20}{1000 * s:.2f}')
    print('\nDecode only, one core:')
    decoded, reducible = decode_rates(data_source, num_images)
  print(f'\nPipelines, images/s (median of {FLAGS.rounds} rounds; load at end '
        f'{os.getloadavg()[0]:.1f}):')
  print(format_pipelines(rates, FLAGS.workers))
  if FLAGS.profile_images:
    print(f'\nDecode only, one core, {num_images} images ({100 * reducible:.0f}% of them '
          'reducible by a training crop):')
    print('| decoder | full, images/s | reduced, images/s |\n|---|---|---|')
    for name in dict.fromkeys(n.rpartition(',')[0] for n in decoded):
      full, reduced = (statistics.median(decoded[f'{name}, {k}']) for k in ('full', 'reduced'))
      print(f'| {name} | {full:.0f} | {reduced:.0f} |')
  per_core = statistics.median(rates['ours, 1 core'])
  per_core_workers = statistics.median(rates[f'ours, {FLAGS.workers} workers']) / FLAGS.workers
  print('\nCores a TPU host needs for this pipeline (needed / our images/s per core):')
  print(format_cores_needed(needs, per_core, per_core_workers))


if __name__ == '__main__':
  app.run(main)
