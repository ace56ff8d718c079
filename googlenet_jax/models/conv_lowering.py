"""The CPU form of convolutions (matrix multiplies) and max-pool gradients (masks).

XLA's CPU convolutions, and above all their gradients, run far below its matmul
speed; a k x k convolution is one matmul of the input's k*k shifted windows,
concatenated on the channel axis, with the kernel reshaped to (k*k*C_in, C_out),
and its gradients are matmuls too. XLA's CPU backend also rewrites a max-pool's
gradient (select-and-scatter) into a reduce-window over (value, index) pairs
and a scatter, about half of GoogLeNet's train step; `masked_max_pool`
computes it from one comparison per window offset instead.

`config.conv_lowering` picks the form: 'auto' (the default) takes the CPU form
on a CPU and XLA's own ops elsewhere, where cuDNN and the TPU's convolution
units are the fast path; 'matmul' and 'xla' force one. `conv_module` and
`max_pool` give the models' `conv` and `max_pool` fields for a form; the
parameters, and so the checkpoints, are the same in every form.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from googlenet_jax.models.googlenet import Conv

NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')
FORMS = ('auto', 'matmul', 'xla')


def conv_as_matmul(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], precision=None) -> jax.Array:
  """NHWC x HWIO convolution as one matmul over the input's kernel-sized windows."""
  kh, kw, c_in, c_out = kernel.shape
  views = [view for _, view in windows(jnp.pad(x, ((0, 0), *padding, (0, 0))),
                                       (kh, kw), strides)]
  # Channel (i * kw + j) * c_in + c of the patches is kernel[i, j, c].
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  return jnp.matmul(patches, kernel.reshape(kh * kw * c_in, c_out), precision=precision)


def windows(x: jax.Array, window: Sequence[int],
            strides: Sequence[int]) -> list[tuple[tuple[int, int], jax.Array]]:
  """((i, j), x[:, i::sh, j::sw] cut to the output's size) for each window offset.

  Element [n, y, x, c] of the view at (i, j) is the window of output (y, x)'s
  element at offset (i, j); the offsets come in row-major order.
  """
  (kh, kw), (sh, sw) = window, strides
  out_h, out_w = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
  return [((i, j), x[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw])
          for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def masked_max_pool(x: jax.Array, window_shape: Sequence[int],
                    strides: Sequence[int] | None = None,
                    padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
  """`nn.max_pool` (NHWC, explicit padding), whose gradient is computed by masks.

  The values are nn.max_pool's. The gradient is XLA's too: each output's
  gradient goes to the first maximum of its window in row-major order, as
  select-and-scatter with `>=` picks it; only the order of the sums differs.
  """
  return nn.max_pool(x, tuple(window_shape), strides=_strides(window_shape, strides),
                     padding=tuple(padding))


def _strides(window_shape, strides) -> tuple[int, ...]:
  return tuple(strides) if strides is not None else (1,) * len(window_shape)


def _masked_max_pool_fwd(x, window_shape, strides, padding):
  y = masked_max_pool(x, window_shape, strides, padding)
  return y, (x, y)


@jax.named_scope('masked_max_pool_gradient')  # Named in profiles.
def _masked_max_pool_bwd(window_shape, strides, padding, residuals, g):
  """Each window offset's mask of first maxima routes g back to that offset's inputs."""
  x, y = residuals
  (top, _), (left, _) = padding
  (sh, sw), (out_h, out_w) = _strides(window_shape, strides), y.shape[1:3]
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)  # Outputs whose maximum an earlier offset took.
  grad = jnp.zeros(padded.shape, g.dtype)
  for (i, j), view in windows(padded, window_shape, (sh, sw)):
    chosen = (view == y) & ~taken
    taken = taken | chosen
    # The transpose of the strided view: g back at the inputs it was read from.
    grad = grad + lax.pad(jnp.where(chosen, g, zero), zero, (
        (0, 0, 0),
        (i, padded.shape[1] - i - sh * (out_h - 1) - 1, sh - 1),
        (j, padded.shape[2] - j - sw * (out_w - 1) - 1, sw - 1),
        (0, 0, 0)))
  return (grad[:, top:top + x.shape[1], left:left + x.shape[2]],)


masked_max_pool.defvjp(_masked_max_pool_fwd, _masked_max_pool_bwd)


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


def max_pool(form: str) -> Callable[..., jax.Array]:
  """The models' `max_pool` field for `form`, called as `nn.max_pool`."""
  return masked_max_pool if uses_matmuls(form) else nn.max_pool
