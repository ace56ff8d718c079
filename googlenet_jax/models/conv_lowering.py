"""Convolutions as matrix multiplies (im2col), the form XLA's CPU backend runs fastest.

XLA's CPU convolutions, and above all their gradients, run far below its matmul
speed; a k x k convolution is one matmul of the input's k*k shifted windows,
concatenated on the channel axis, with the kernel reshaped to (k*k*C_in, C_out),
and its gradients are matmuls too. `config.conv_lowering` picks the form:
'auto' (the default) takes the matmul form on a CPU and `lax.conv_general_dilated`
elsewhere, where cuDNN and the TPU's convolution units are the fast path;
'matmul' and 'xla' force one. `conv_module` gives the models' `conv` field for a
form; the parameters, and so the checkpoints, are the same in every form.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from googlenet_jax.models.googlenet import Conv

NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')
FORMS = ('auto', 'matmul', 'xla')


def conv_as_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], precision=None) -> jax.Array:
  """NHWC x HWIO convolution as one matmul over the input's kernel-sized windows."""
  kh, kw, c_in, c_out = kernel.shape
  sh, sw = strides
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_h = (x.shape[1] - kh) // sh + 1
  out_w = (x.shape[2] - kw) // sw + 1
  windows = [x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
             for i in range(kh) for j in range(kw)]
  # Channel (i * kw + j) * c_in + c of the patches is kernel[i, j, c].
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
  return jnp.matmul(patches, kernel.reshape(kh * kw * c_in, c_out), precision=precision)


def is_plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                  feature_group_count) -> bool:
  """Whether this is an undilated, ungrouped NHWC convolution with explicit padding."""
  return (not isinstance(padding, str)
          and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
          and feature_group_count == 1 and lhs.ndim == 4
          and dimension_numbers == lax.conv_dimension_numbers(
              lhs.shape, rhs.shape, NHWC_HWIO))


def matmul_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                rhs_dilation=None, dimension_numbers=None,
                                feature_group_count=1, precision=None,
                                **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`, computed by `conv_as_matmul` where it can be."""
  if not kwargs and is_plain_nhwc(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count):
    return conv_as_matmul(lhs, rhs, window_strides, padding, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)


def uses_matmuls(form: str, backend: str | None = None) -> bool:
  """Whether `form` computes convolutions as matmuls on `backend` (default: JAX's)."""
  if form not in FORMS:
    raise ValueError(f'Unknown convolution form {form!r}: choose one of {FORMS}.')
  return form == 'matmul' or (form == 'auto' and
                              (backend or jax.default_backend()) == 'cpu')


def conv_module(form: str) -> Callable[..., nn.Module]:
  """The models' `conv` field for `form`: the Xavier-initialised Conv, in that form."""
  if uses_matmuls(form):
    return functools.partial(Conv, conv_general_dilated=matmul_conv_general_dilated)
  return Conv
