"""config.dtype: bfloat16 computation with float32 parameters, and checkpoints of either."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from googlenet_jax import evaluate
from googlenet_jax import experiment
from googlenet_jax import predict
from googlenet_jax import sharding
from googlenet_jax import steps
from googlenet_jax import train
from googlenet_jax import train_state
from googlenet_jax.models import GoogLeNet
from googlenet_jax.tools import compile_mode
from conftest import IMAGE_SIZE, uniform
from fake_data import NUM_TEST, NUM_TRAIN


def with_dtype(config, dtype):
  copy = config.copy_and_resolve_references()
  copy.dtype = dtype
  return copy


def test_bfloat16_logits_are_within_2_percent_of_float32():
  images = uniform((4, IMAGE_SIZE, IMAGE_SIZE, 1), seed=3)
  variables = train_state.init_variables(GoogLeNet(), (IMAGE_SIZE, IMAGE_SIZE, 1),
                                         jax.random.key(0))
  logits32 = train_state.jit_run_once(GoogLeNet().apply)(variables, images)
  logits16 = train_state.jit_run_once(GoogLeNet(dtype=jnp.bfloat16).apply)(variables, images)
  assert logits16.dtype == jnp.bfloat16
  error = jnp.linalg.norm(logits16.astype(jnp.float32) - logits32)
  assert 0 < error < 0.02 * jnp.linalg.norm(logits32)


def convolution_operand_types(config) -> set[str]:
  """Element types of every convolution's operands in the chapter's lowered train step."""
  config = config.copy_and_resolve_references()
  config.model = 'googlenet'  # Shapes, lowered only: the whole network costs little.
  state = experiment.build(config, load_data=False).abstract_state()
  batch = {'image': np.zeros((1, 2, 28, 28, 1), np.uint8),
           'label': np.zeros((1, 2), np.int32)}
  text = jax.pmap(steps.train_step, axis_name=sharding.AXIS, devices=jax.devices()[:1],
                  static_broadcasted_argnums=(2,)).lower(
                      compile_mode.replicated(state, 1), batch, IMAGE_SIZE).as_text()
  # (tensor<2x32x32x1xbf16>, tensor<7x7x1x64xbf16>) -> ...: the operands' types.
  operands = re.findall(r'stablehlo\.convolution.*?: \(tensor<[^>]*x(\w+)>, '
                        r'tensor<[^>]*x(\w+)>\)', text)
  # GoogLeNet's 57 convs, their kernel gradients, and the input gradients of
  # all but the first.
  assert len(operands) == 3 * 57 - 1
  return {t for pair in operands for t in pair}


@pytest.mark.parametrize('dtype, element_type', [('bfloat16', 'bf16'),
                                                 ('float32', 'f32')])
def test_the_train_step_convolves_in_the_configs_dtype(config, dtype, element_type):
  assert convolution_operand_types(with_dtype(config, dtype)) == {element_type}


def test_bfloat16_keeps_parameters_and_statistics_float32(config):
  bf16 = with_dtype(config, 'bfloat16')
  bf16.model = 'googlenet_bn'
  state = experiment.build(bf16, load_data=False).abstract_state()
  for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state)):
    assert leaf.dtype == jnp.float32


def test_a_bfloat16_run_resumes_and_predicts_in_float32_and_evaluates_in_either(config, tmp_path):
  bf16, f32 = with_dtype(config, 'bfloat16'), with_dtype(config, 'float32')
  steps_per_epoch = NUM_TRAIN // config.batch_size
  bf16.num_epochs = 1
  train.train_and_evaluate(experiment.build(bf16), str(tmp_path))
  resumed = train.train_and_evaluate(experiment.build(f32), str(tmp_path))  # Epoch 2 in float32.
  assert int(resumed.step[0]) == 2 * steps_per_epoch
  results = {dtype: evaluate.evaluate_checkpoint(
                 experiment.build_inference(c, str(tmp_path), overrides={'dtype'}), str(tmp_path))
             for dtype, c in (('bfloat16', bf16), ('float32', f32))}
  for result in results.values():
    assert result['num_examples'] == NUM_TEST
  np.testing.assert_allclose(results['bfloat16']['loss'], results['float32']['loss'],
                             rtol=0.02)
  in_f32 = experiment.build_inference(f32, str(tmp_path), overrides={'dtype'})
  assert in_f32.record['dtype'] == 'float32'
  found = predict.predict(in_f32.p_eval_step, in_f32.state, in_f32.test,
                          in_f32.eval_batch_size, config.num_predictions)
  assert len(found['prediction']) == config.num_predictions
