"""A TFDS JPEG dataset by name: streamed, cropped on the host, resumed to the bit.

The dataset (tests/jpeg_data.py) is prepared once, in TFDS's own format, with
JPEGs of several sizes, a grayscale, a CMYK and a corrupt one; main.py finds it
by name in fresh processes, as it would find imagenet2012.
"""

import json
import logging
import os
import signal

import chex
import numpy as np
import pytest

import jpeg_data
from conftest import run_main, start_main
from googlenet_jax import experiment
from googlenet_jax import sharding
from googlenet_jax import train
from googlenet_jax.data import tfds_images
from googlenet_jax.errors import UserError
from test_pods import start_hosts
from test_reliability import final_state, finished_steps, signal_after_checkpoint

IMAGE_SIZE = 16


@pytest.fixture(scope='module')
def jpegs(config, tmp_path_factory):
  """The chapter's test config on the prepared JPEG dataset: 3 steps an epoch, 2 epochs."""
  data_dir = str(tmp_path_factory.mktemp('tfds_jpegs'))
  jpeg_data.prepare(data_dir)
  streamed = config.copy_and_resolve_references()
  streamed.update(dataset=jpeg_data.NAME, data_dir=data_dir, image_size=IMAGE_SIZE,
                  batch_size=8, eval_batch_size=8, num_epochs=2)
  return streamed


@pytest.fixture(scope='module')
def splits(jpegs):
  return experiment.load_dataset(jpegs).splits


def read(source, indices, train=True, epoch=0):
  return next(source.read([np.asarray(indices)], train=train, seed=0, epoch=epoch))


def test_a_training_crop_depends_on_the_seed_epoch_and_example_alone(splits):
  batch = read(splits['train'], [0, 4, 5, 6])
  chex.assert_shape(batch['image'], (4, IMAGE_SIZE, IMAGE_SIZE, 3))
  assert batch['image'].dtype == np.uint8
  # The same example in another batch, at another position: the same crop.
  np.testing.assert_array_equal(read(splits['train'], [6, 0])['image'][0], batch['image'][3])
  # Another epoch: another crop of the same image.
  assert not np.array_equal(read(splits['train'], [0], epoch=1)['image'][0], batch['image'][0])
  np.testing.assert_array_equal(batch['label'], [0, 4, 5, 6])


def test_grayscale_and_cmyk_become_rgb_and_a_corrupt_image_is_masked_once(splits, caplog):
  indices = [jpeg_data.GRAY, jpeg_data.CMYK, jpeg_data.CORRUPT]
  with caplog.at_level(logging.WARNING):
    batch = read(splits['train'], indices)
    again = read(splits['train'], indices, epoch=1)
  chex.assert_shape(batch['image'], (3, IMAGE_SIZE, IMAGE_SIZE, 3))
  gray = batch['image'][0].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 2  # Gray stays gray in RGB.
  np.testing.assert_array_equal(batch['mask'], [True, True, False])
  np.testing.assert_array_equal(again['mask'], [True, True, False])
  assert not batch['image'][2].any()
  warnings = [r.getMessage() for r in caplog.records if 'cannot be decoded' in r.getMessage()]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f'Example {jpeg_data.CORRUPT} of the train split cannot be '
                                'decoded (image file is truncated')


def test_evaluation_takes_the_centre_of_the_image(splits):
  image = read(splits['test'], [0], train=False)['image'][0]
  np.testing.assert_array_equal(image, read(splits['test'], [0], train=False)['image'][0])
  # The centre 87.5% of a 60 px image whose white square spans 6..54: white
  # but for a rim of about (53 - 48) / 2 = 2.5 px, scaled by 16/53, at each edge.
  assert image[2:-2, 2:-2].min() > 200
  assert image[0, :].mean() < image[IMAGE_SIZE // 2, :].mean()


def test_a_dataset_that_is_not_prepared_says_how_to_prepare_it(jpegs, tmp_path):
  missing = jpegs.copy_and_resolve_references()
  missing.update(dataset='imagenette', data_dir=str(tmp_path))
  with pytest.raises(UserError, match=rf'^Dataset imagenette is not prepared in {tmp_path} '
                                      r'.*tfds build imagenette .*--file_format=array_record'):
    experiment.load_dataset(missing)
  assert 'manual_dir' in tfds_images.not_prepared('imagenet2012', str(tmp_path))


def test_a_missing_split_names_the_splits_there_and_a_slice_is_read(jpegs):
  no_split = jpegs.copy_and_resolve_references()
  no_split.eval_split = 'validation'
  with pytest.raises(UserError, match=r"has no split 'validation': it has test, train \("):
    experiment.load_dataset(no_split)
  sliced = jpegs.copy_and_resolve_references()
  sliced.update(train_split='train[:50%]', eval_split='test[2:7]')
  splits = experiment.load_dataset(sliced).splits
  assert (len(splits['train']), len(splits['test'])) == (jpeg_data.NUM_TRAIN // 2, 5)


def test_the_classes_are_the_datasets_unless_the_config_sets_them(jpegs):
  assert jpegs.num_classes == 0  # The default: the dataset's, from its info.
  assert experiment.with_dataset_classes(jpegs).num_classes == len(jpeg_data.CLASS_NAMES)
  six = jpegs.copy_and_resolve_references()
  six.num_classes = 6
  with pytest.raises(UserError, match=rf'^config.num_classes is 6, but {jpeg_data.NAME} has '
                                      r'7 classes: run with --config.num_classes=7\.$'):
    experiment.load_dataset(six)


def test_a_dataset_without_an_image_feature_names_its_features(config):
  # Fashion-MNIST as this codebase prepares it holds its pixels as a Tensor.
  experiment.load_dataset(config)
  tensors = config.copy_and_resolve_references()
  tensors.dataset = 'fashion_mnist_idx'
  with pytest.raises(UserError, match=r'^Dataset fashion_mnist_idx is not an image '
                                      r'classification dataset: it has image \(Tensor\), '
                                      r'label \(ClassLabel\)'):
    experiment.load_dataset(tensors)


@pytest.fixture(scope='module')
def uninterrupted(jpegs, tmp_path_factory):
  """The streamed run in this process, decoded here: its workdir and final state."""
  workdir = str(tmp_path_factory.mktemp('jpegs_whole'))
  return workdir, train.train_and_evaluate(experiment.build(jpegs), workdir)


def test_a_corrupt_training_image_is_counted_as_skipped_every_epoch(uninterrupted):
  workdir, _ = uninterrupted
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    epochs = [json.loads(line) for line in f]
  assert [e['train_skipped'] for e in epochs] == [1, 1]
  assert [e['test_skipped'] for e in epochs] == [0, 0]
  assert all(0 <= e['test_accuracy'] <= e['test_top5_accuracy'] <= 1 for e in epochs)


def test_killed_mid_epoch_it_resumes_to_the_bit_and_evaluates_with_top5(
    jpegs, uninterrupted, tmp_path):
  # Two decoding workers in main.py against none here: the same batches.
  workers = '--config.data_workers=2'
  process = start_main(tmp_path, jpegs, workers, '--config.checkpoint_every_steps=1')
  signal_after_checkpoint(process, tmp_path, 2, signal.SIGKILL)  # Epoch 1 has 3 steps.
  assert finished_steps(tmp_path)[-1] in (2, 3, 4)
  resumed = run_main(tmp_path, jpegs, workers)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  state = final_state(jpegs, tmp_path)
  assert int(state.step) == 6
  chex.assert_trees_all_equal(state.params, sharding.unreplicate(uninterrupted[1].params))
  # Eval from the workdir alone: the network and the dataset from the checkpoint.
  evaluated = run_main(tmp_path, None, '--mode=eval', '--config.eval_batch_size=8')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(tmp_path / 'eval.json') as f:
    result = json.load(f)
  assert result['num_examples'] == jpeg_data.NUM_TEST
  assert 0 <= result['accuracy'] <= result['top5_accuracy'] <= 1
  assert list(result['per_class_accuracy']) == list(jpeg_data.CLASS_NAMES)


def test_two_hosts_reading_their_halves_from_a_bucket_train_as_one(
    jpegs, uninterrupted, gcs, bucket, tmp_path):
  data_dir = f'{bucket}/tensorflow_datasets'
  gcs.upload(jpegs.data_dir, data_dir)
  hosts = start_hosts([tmp_path, tmp_path], jpegs, f'--config.data_dir={data_dir}')
  for host in hosts:
    _, stderr = host.communicate(timeout=300)
    assert host.returncode == 0, stderr[-3000:]
  state = final_state(jpegs, tmp_path)
  assert int(state.step) == 6
  # Equal but for rounding: the gradients' mean over the 8 devices is summed in
  # another order across two processes (gloo) than within one, which moves weights
  # by about 1e-9. One image of the first batch flipped the other way moved every
  # weight array by 1e-4 or more (measured): a wrong row or crop cannot pass.
  chex.assert_trees_all_close(state.params, sharding.unreplicate(uninterrupted[1].params),
                              rtol=1e-5, atol=1e-8)
