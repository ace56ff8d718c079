"""Tests for the Fashion-MNIST builder and the host-side batches."""

import gzip
import itertools
import logging
import os

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
import pytest

from googlenet_jax import errors
from googlenet_jax import input_pipeline
from googlenet_jax import sharding
from googlenet_jax.data import fashion_mnist

from fake_data import NUM_TEST, NUM_TRAIN, idx_bytes, write_dataset, write_idx

def example_ids(batch) -> np.ndarray:
  """Returns the example index (pixel [0, 0]) of each row, flattened."""
  return batch['image'][..., 0, 0, 0].reshape(-1)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  source_dir = tmp_path_factory.mktemp('idx')
  return source_dir, write_dataset(source_dir)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def sources(written, data_dir):
  source_dir, _ = written
  return fashion_mnist.load(data_dir, source_dir=str(source_dir),
                            verify_checksums=False).splits


def all_batches(batches_fn, source, process_count, num_local_devices,
                **kwargs):
  """Returns, per step, the list of every process's batch."""
  per_process = [
      list(batches_fn(source, process_index=p, process_count=process_count,
                      num_local_devices=num_local_devices, **kwargs))
      for p in range(process_count)
  ]
  return list(zip(*per_process))


# The builder.


def test_builder_prepares_local_idx_files_in_file_order(written, sources):
  _, arrays = written
  for split, (images, labels) in arrays.items():
    source = sources[split]
    assert len(source) == len(images)
    assert source.images.dtype == np.uint8 and source.labels.dtype == np.int32
    np.testing.assert_array_equal(source.images, images[..., None])
    np.testing.assert_array_equal(source.labels, labels)


def test_read_source_reads_every_chunk_in_order(written, sources, data_dir,
                                                 monkeypatch):
  del sources  # Prepared the data.
  _, arrays = written
  images, labels = arrays['train']
  monkeypatch.setattr(input_pipeline, '_READ_CHUNK', 7)  # 50 = 7 * 7 + 1.
  builder = fashion_mnist.get_builder(data_dir, verify_checksums=False)
  source = input_pipeline.read_source(builder.as_data_source('train'))
  np.testing.assert_array_equal(source.images, images[..., None])
  np.testing.assert_array_equal(source.labels, labels)


def test_array_source_is_read_only_and_leaves_its_inputs_writable(written):
  _, arrays = written
  images, labels = (a.copy() for a in arrays['test'])
  source = input_pipeline.ArraySource(images[..., None], labels)
  assert source.labels.dtype == np.int32
  with pytest.raises(ValueError, match='read-only'):
    source.images[0] = 0
  with pytest.raises(ValueError, match='read-only'):
    source.labels[0] = 0
  images[0] = 0  # The caller's arrays are not frozen.
  with pytest.raises(ValueError, match='23 images but 22 labels'):
    input_pipeline.ArraySource(images, labels[1:])


def test_get_builder_reuses_prepared_data_without_the_source(
    sources, data_dir, tmp_path):
  del sources  # Prepared the data.
  builder = fashion_mnist.get_builder(data_dir, str(tmp_path / 'gone'),
                                      verify_checksums=False)
  assert len(builder.as_data_source('test')) == NUM_TEST


def test_missing_files_offline_raise_data_error_with_install_hint(
    tmp_path, monkeypatch):
  # Nothing listens on port 1: the download fails as it would offline.
  monkeypatch.setattr(fashion_mnist, 'URL', 'http://127.0.0.1:1/')
  with pytest.raises(fashion_mnist.DataError,
                     match='apt-get install dataset-fashion-mnist') as e:
    fashion_mnist.get_builder(tmp_path / 'tfds', str(tmp_path / 'missing'))
  assert '\n' not in str(e.value)
  assert isinstance(e.value, errors.UserError)


def test_truncated_gzip_raises_data_error_naming_the_file(tmp_path):
  write_dataset(tmp_path)
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:-200])
  with pytest.raises(fashion_mnist.DataError, match='t10k-images-idx3-ubyte'):
    fashion_mnist.get_builder(tmp_path / 'tfds', str(tmp_path),
                              verify_checksums=False)


def test_idx_shorter_than_its_header_raises_data_error(tmp_path):
  write_dataset(tmp_path)
  path = tmp_path / 'train-labels-idx1-ubyte.gz'
  with gzip.open(path, 'wb') as f:
    f.write(idx_bytes(np.zeros(NUM_TRAIN, np.uint8))[:-1])
  with pytest.raises(fashion_mnist.DataError,
                     match='train-labels-idx1-ubyte.*truncated'):
    fashion_mnist.get_builder(tmp_path / 'tfds', str(tmp_path),
                              verify_checksums=False)


@pytest.mark.parametrize('file_name, array, expected', [
    # A 2-D labels file: a valid IDX, but not a labels file.
    ('train-labels-idx1-ubyte.gz', np.zeros((NUM_TRAIN, 1), np.uint8),
     'magic number'),
    ('train-images-idx3-ubyte.gz', np.zeros((NUM_TRAIN, 32, 32), np.uint8),
     '32x32 images'),
    ('t10k-labels-idx1-ubyte.gz', np.zeros(NUM_TEST - 1, np.uint8),
     '23 images but'),
    ('t10k-labels-idx1-ubyte.gz', np.full(NUM_TEST, 10, np.uint8), 'label 10'),
], ids=['wrong_magic_number', '32x32_images', 'counts_disagree', 'label_10'])
def test_malformed_idx_file_raises_data_error(tmp_path, file_name, array, expected):
  write_dataset(tmp_path)
  write_idx(tmp_path / file_name, array)
  with pytest.raises(fashion_mnist.DataError, match=expected):
    fashion_mnist.get_builder(tmp_path / 'tfds', str(tmp_path),
                              verify_checksums=False)


def test_files_that_are_not_the_real_data_fail_checksum(tmp_path):
  write_dataset(tmp_path)
  with pytest.raises(fashion_mnist.DataError, match='sha256'):
    fashion_mnist.get_builder(tmp_path / 'tfds', str(tmp_path))
  assert not (tmp_path / 'tfds' / 'fashion_mnist_idx' / '1.0.0').exists()


# Training batches.


def test_train_order_is_fixed_by_seed_and_epoch(sources):
  def ids(seed, epoch):
    batches = input_pipeline.train_batches(
        sources['train'], global_batch_size=8, seed=seed, epoch=epoch,
        process_index=0, process_count=1, num_local_devices=1)
    return np.concatenate([example_ids(b) for b in batches])

  np.testing.assert_array_equal(ids(0, 0), ids(0, 0))
  assert not np.array_equal(ids(0, 0), ids(0, 1))
  assert not np.array_equal(ids(0, 0), ids(1, 0))


def test_train_batches_have_device_shapes_and_dtypes(sources):
  batch = next(input_pipeline.train_batches(
      sources['train'], global_batch_size=16, seed=0, epoch=0,
      process_index=1, process_count=2, num_local_devices=4))
  assert batch['image'].shape == (4, 2, 28, 28, 1)
  assert batch['image'].dtype == np.uint8
  assert batch['label'].shape == (4, 2)
  assert batch['label'].dtype == np.int32


def test_train_batches_follow_the_seed_epoch_permutation(written, sources):
  # Checkpoints resume from (step, seed, epoch): this order must not change.
  _, arrays = written
  images, labels = arrays['train']
  batches = list(input_pipeline.train_batches(
      sources['train'], global_batch_size=16, seed=5, epoch=3,
      process_index=0, process_count=1, num_local_devices=2))
  order = np.random.default_rng((5, 3)).permutation(NUM_TRAIN)[:3 * 16]
  np.testing.assert_array_equal(
      np.concatenate([b['image'].reshape(-1, 28, 28, 1) for b in batches]),
      images[order, ..., None])
  np.testing.assert_array_equal(
      np.concatenate([b['label'].reshape(-1) for b in batches]), labels[order])


@pytest.mark.parametrize('process_count,num_local_devices',
                         [(2, 1), (2, 4), (4, 1), (4, 2)])
def test_process_shards_make_up_the_single_process_batches(
    sources, process_count, num_local_devices):
  kwargs = dict(global_batch_size=8, seed=3, epoch=1)
  single = all_batches(input_pipeline.train_batches, sources['train'], 1, 1,
                       **kwargs)
  sharded = all_batches(input_pipeline.train_batches, sources['train'],
                        process_count, num_local_devices, **kwargs)
  assert len(sharded) == len(single) == NUM_TRAIN // 8
  for (whole,), shards in zip(single, sharded):
    for key in ('image', 'label'):
      joined = np.concatenate([s[key].reshape(-1, *s[key].shape[2:])
                               for s in shards])
      np.testing.assert_array_equal(joined, whole[key][0])


def test_epoch_sees_each_example_at_most_once(written, sources):
  _, arrays = written
  steps = all_batches(input_pipeline.train_batches, sources['train'], 2, 2,
                      global_batch_size=8, seed=0, epoch=0)
  ids = np.concatenate([example_ids(b) for step in steps for b in step])
  assert len(ids) == (NUM_TRAIN // 8) * 8
  assert len(np.unique(ids)) == len(ids)
  labels = np.concatenate([b['label'].reshape(-1) for s in steps for b in s])
  np.testing.assert_array_equal(labels, arrays['train'][1][ids])


def test_start_step_resumes_the_same_epoch_order(sources):
  def batches(start_step):
    return list(input_pipeline.train_batches(
        sources['train'], global_batch_size=8, seed=0, epoch=2,
        process_index=0, process_count=1, num_local_devices=2,
        start_step=start_step))

  full, resumed = batches(0), batches(4)
  assert len(resumed) == len(full) - 4
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a['image'], b['image'])


def test_batch_not_divisible_by_devices_raises_user_error(sources):
  with pytest.raises(errors.UserError,
                     match=r'batch_size 100 .* 8 devices.*batch_size=104'):
    next(input_pipeline.train_batches(
        sources['train'], global_batch_size=100, seed=0, epoch=0,
        process_index=0, process_count=2, num_local_devices=4))
  with pytest.raises(errors.UserError,
                     match=r'eval_batch_size 100 .*--config.eval_batch_size'):
    next(input_pipeline.eval_batches(
        sources['test'], global_batch_size=100, process_index=0,
        process_count=2, num_local_devices=4))


def test_batch_size_must_be_positive():
  with pytest.raises(errors.UserError, match='batch_size 0 must be positive'):
    sharding.check_batch_size(0, 8)


def test_steps_per_epoch_drops_the_remainder():
  assert input_pipeline.steps_per_epoch(60_000, 128) == 468
  with pytest.raises(errors.UserError, match='larger than the 50'):
    input_pipeline.steps_per_epoch(50, 64)


# Evaluation batches.


@pytest.mark.parametrize('process_count,num_local_devices',
                         [(1, 1), (2, 2), (4, 1)])
def test_eval_counts_every_example_exactly_once(sources, process_count,
                                                num_local_devices):
  steps = all_batches(input_pipeline.eval_batches, sources['test'],
                      process_count, num_local_devices, global_batch_size=8)
  assert len(steps) == -(-NUM_TEST // 8)
  masks = np.concatenate([b['mask'].reshape(-1) for s in steps for b in s])
  ids = np.concatenate([example_ids(b) for s in steps for b in s])
  assert masks.sum() == NUM_TEST
  np.testing.assert_array_equal(ids[masks], np.arange(NUM_TEST))
  assert steps[0][0]['mask'].shape == (num_local_devices,
                                       8 // process_count // num_local_devices)


def test_eval_batches_hold_the_examples_in_order_padded_with_example_0(
    written, sources):
  _, arrays = written
  images, labels = arrays['test']
  steps = all_batches(input_pipeline.eval_batches, sources['test'], 1, 2,
                      global_batch_size=8)
  expected = np.concatenate([np.arange(NUM_TEST),
                             np.zeros(-NUM_TEST % 8, int)])  # 23 + 1 padding.
  got_images = np.concatenate([b['image'].reshape(-1, 28, 28, 1)
                               for (b,) in steps])
  got_labels = np.concatenate([b['label'].reshape(-1) for (b,) in steps])
  np.testing.assert_array_equal(got_images, images[expected, ..., None])
  np.testing.assert_array_equal(got_labels, labels[expected])


# Prefetching to the devices.


def local_train_batches(source):
  """An epoch of batches of 16 for the local devices: 3 steps of 50 examples."""
  return input_pipeline.train_batches(
      source, global_batch_size=16, seed=0, epoch=0, process_index=0,
      process_count=1, num_local_devices=jax.local_device_count())


def test_prefetch_yields_the_batches_in_order_split_over_the_devices(sources):
  host = list(input_pipeline.eval_batches(
      sources['test'], global_batch_size=16, process_index=0, process_count=1,
      num_local_devices=jax.local_device_count()))
  on_device = list(input_pipeline.prefetch_to_device(iter(host)))
  assert len(on_device) == len(host) == 2
  devices = jax.local_devices()
  # The layout sharding.replicate gives the state.
  layout = NamedSharding(Mesh(devices, (sharding.AXIS,)), PartitionSpec(sharding.AXIS))
  for host_batch, device_batch in zip(host, on_device):
    assert device_batch.keys() == host_batch.keys() == {'image', 'label',
                                                        'mask'}
    for key, array in device_batch.items():
      assert isinstance(array, jax.Array)
      assert array.sharding == layout
      assert array.dtype == host_batch[key].dtype
      for d, device in enumerate(devices):
        (shard,) = [s for s in array.addressable_shards if s.device == device]
        np.testing.assert_array_equal(shard.data, host_batch[key][d:d + 1])


@pytest.mark.parametrize('size', [1, 2, 3])
def test_prefetch_keeps_size_batches_ahead_of_the_one_in_use(sources, size):
  pulled = []
  def counted(batches):
    for batch in batches:
      pulled.append(batch)
      yield batch

  batches = input_pipeline.prefetch_to_device(
      counted(local_train_batches(sources['train'])), size)
  for step in range(3):  # 3 steps in the epoch.
    next(batches)
    assert len(pulled) == min(step + 1 + size, 3)
  assert next(batches, None) is None


def test_a_pmapped_step_fed_by_prefetch_compiles_once(sources, caplog):
  def step(state, batch):
    return state + 1, jnp.sum(batch['image'], dtype=jnp.int32) + jnp.sum(
        batch['label'])

  p_step = jax.pmap(step, axis_name=sharding.AXIS, donate_argnums=(0,))
  state = sharding.replicate(np.zeros((), np.int32))
  batches = itertools.chain(local_train_batches(sources['train']),
                            local_train_batches(sources['train']))
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    for batch in input_pipeline.prefetch_to_device(batches):
      state, _ = p_step(state, batch)
    jax.block_until_ready(state)
  compiles = [r for r in caplog.records
              if r.getMessage().startswith('Compiling')]
  assert len(compiles) == 1, [r.getMessage() for r in compiles]
  np.testing.assert_array_equal(state, 6)


# The real dataset.


@pytest.fixture(scope='module')
def real_builder(tmp_path_factory):
  return fashion_mnist.get_builder(tmp_path_factory.mktemp('real'),
                                   fashion_mnist.DEFAULT_SOURCE_DIR)


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_SOURCE_DIR),
                    reason='dataset-fashion-mnist is not installed')
@pytest.mark.parametrize('split,num_per_class', [('train', 6000),
                                                 ('test', 1000)])
def test_real_fashion_mnist_has_balanced_classes(real_builder, split,
                                                 num_per_class):
  source = real_builder.as_data_source(split)
  assert len(source) == 10 * num_per_class
  examples = source.__getitems__(list(range(len(source))))
  labels = np.array([e['label'] for e in examples])
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                [num_per_class] * 10)
  assert examples[0]['image'].shape == (28, 28, 1)
