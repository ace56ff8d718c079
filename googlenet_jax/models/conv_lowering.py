"""The CPU form of convolutions (matrix multiplies) and max-pools (with indices).

XLA's CPU convolutions, and above all their gradients, run far below its matmul
speed; a k x k convolution is one matmul of the input's k*k shifted windows,
concatenated on the channel axis, with the kernel reshaped to (k*k*C_in, C_out),
and its gradients are matmuls too. XLA's CPU backend also rewrites a max-pool's
gradient (select-and-scatter) into a reduce-window over (value, index) pairs
and a scatter, about half of GoogLeNet's train step; `indexed_max_pool` keeps
each window's first maximum from the forward pass and gathers the gradient
from it, one plain slice per window offset.

`config.conv_lowering` picks the form: 'auto' (the default) takes the CPU form
when the step is compiled for CPUs and XLA's own ops for anything else, where
cuDNN and the TPU's convolution units are the fast path; 'matmul' and 'xla'
force one. `resolve` turns 'auto' into one of those two for a platform (that of
the devices the step is compiled for, not the host's: a TPU step compiled on a
CPU host takes XLA's ops). `conv_module` and `max_pool` give the models' `conv`
and `max_pool` fields for a resolved form; the parameters, and so the
checkpoints, are the same in every form.
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


def indexed_max_pool(x: jax.Array, window_shape: Sequence[int],
                     strides: Sequence[int] | None = None,
                     padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
  """`nn.max_pool` (NHWC, explicit padding) that keeps where each maximum was.

  The values are nn.max_pool's. The gradient is XLA's too: each output's
  gradient goes to the first maximum of its window in row-major order, as
  select-and-scatter with `>=` picks it; only the order of the sums differs.
  """
  strides = tuple(strides) if strides is not None else (1,) * len(window_shape)
  return _indexed_max_pool(x, tuple(window_shape), strides,
                           tuple(map(tuple, padding)), x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _indexed_max_pool(x, window_shape, strides, padding, x_shape):
  return _pool_and_first_maxima(x, window_shape, strides, padding)[0]


@jax.named_scope('indexed_max_pool')  # Named in profiles.
def _pool_and_first_maxima(x, window_shape, strides, padding):
  """The pooled values, and the offset of each window's first maximum (row-major).

  One pass over the window offsets' strided views of the padded input.
  """
  padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-np.inf)
  views = [view for _, view in windows(padded, window_shape, strides)]
  pooled, first = views[0], jnp.zeros(views[0].shape, _offset_dtype(window_shape))
  for offset, view in enumerate(views[1:], start=1):
    first = jnp.where(view > pooled, first.dtype.type(offset), first)
    pooled = jnp.maximum(pooled, view)
  return pooled, first


def _offset_dtype(window_shape: Sequence[int]) -> np.dtype:
  """The smallest unsigned integer that holds every window offset, and one more."""
  return np.min_scalar_type(np.prod(window_shape))


def _indexed_max_pool_fwd(x, window_shape, strides, padding, x_shape):
  return _pool_and_first_maxima(x, window_shape, strides, padding)  # Output, residual.


@jax.named_scope('indexed_max_pool_gradient')  # Named in profiles.
def _indexed_max_pool_bwd(window_shape, strides, padding, x_shape, first, g):
  """Each input's gradient: g summed over the windows whose first maximum it is.

  Gathered per stride phase, so that every read is a plain slice: row
  `s * a + r` of the padded input is offset i of window `a - (i - r) // s` for
  each offset i = r (mod s). The phases are interleaved at the end.
  """
  (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window_shape, strides, padding
  n, out_h, out_w, c = g.shape
  height, width = x_shape[1], x_shape[2]
  rows, cols = -(-(height + top + bottom) // sh), -(-(width + left + right) // sw)
  back_h, back_w = (kh - 1) // sh, (kw - 1) // sw  # Most windows back a phase reaches.
  widths = ((0, 0), (back_h, rows - out_h), (back_w, cols - out_w), (0, 0))
  g = jnp.pad(g, widths)
  first = jnp.pad(first, widths, constant_values=kh * kw)  # No offset's number.
  zero = jnp.zeros((), g.dtype)
  phases = [[jnp.zeros((n, rows, cols, c), g.dtype) for _ in range(sw)] for _ in range(sh)]
  for i in range(kh):
    for j in range(kw):
      a, b = back_h - i // sh, back_w - j // sw
      taken = first[:, a:a + rows, b:b + cols] == i * kw + j
      phases[i % sh][j % sw] += jnp.where(taken, g[:, a:a + rows, b:b + cols], zero)
  grad = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)
  grad = grad.reshape(n, rows * sh, cols * sw, c)
  return (grad[:, top:top + height, left:left + width],)


_indexed_max_pool.defvjp(_indexed_max_pool_fwd, _indexed_max_pool_bwd)


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


def resolve(form: str, platform: str | None = None) -> str:
  """'matmul' or 'xla': the form `form` takes on `platform` (default: JAX's default backend).

  `platform` is that of the devices a step is compiled for ('cpu', 'gpu', 'tpu').
  """
  if form not in FORMS:
    raise ValueError(f'Unknown convolution form {form!r}: choose one of {FORMS}.')
  if form != 'auto':
    return form
  return 'matmul' if (platform or jax.default_backend()) == 'cpu' else 'xla'


def uses_matmuls(form: str, backend: str | None = None) -> bool:
  """Whether `form` computes convolutions as matmuls on `backend` (default: JAX's)."""
  return resolve(form, backend) == 'matmul'


_MATMUL_CONV = functools.partial(Conv, conv_general_dilated=matmul_conv_general_dilated)


def conv_module(form: str) -> Callable[..., nn.Module]:
  """The models' `conv` field for a resolved `form`: the Xavier-initialised Conv, in that form.

  One object per form, so that models built alike compare equal.
  """
  return _MATMUL_CONV if _checked(form) == 'matmul' else Conv


def max_pool(form: str) -> Callable[..., jax.Array]:
  """The models' `max_pool` field for a resolved `form`, called as `nn.max_pool`."""
  return indexed_max_pool if _checked(form) == 'matmul' else nn.max_pool


def _checked(form: str) -> str:
  """`form`, which must be resolved: 'auto' depends on the devices, not known here."""
  if form not in ('matmul', 'xla'):
    raise ValueError(f'Expected a resolved form, matmul or xla, got {form!r}: '
                     'see conv_lowering.resolve.')
  return form
