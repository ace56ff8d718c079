"""Convolutions as matrix multiplies (im2col), the form XLA's CPU backend runs fastest.

XLA's CPU convolutions, and above all their gradients, run far below its matmul
speed; a k x k convolution is one matmul of the input's k*k shifted windows,
concatenated on the channel axis, with the kernel reshaped to (k*k*C_in, C_out),
and its gradients are matmuls too. `conv_general_dilated` is what every `Conv`
of the models calls (flax's hook of the same name). `config.conv_lowering`
picks the form: 'auto' (the default) takes the matmul form on a CPU and
`lax.conv_general_dilated` elsewhere, where cuDNN and the TPU's convolution
units are the fast path; 'matmul' and 'xla' force one. It is read when jax
traces a function: one traced before a change keeps its form. The parameters,
and so the checkpoints, are the same either way.
"""

import contextlib
from typing import Iterator, Sequence

import jax
from jax import lax
import jax.numpy as jnp

NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')
FORMS = ('auto', 'matmul', 'xla')
_form = 'auto'


def set_form(form: str) -> None:
  """Chooses how convolutions traced from now on are computed: one of FORMS."""
  global _form
  if form not in FORMS:
    raise ValueError(f'Unknown convolution form {form!r}: choose one of {FORMS}.')
  _form = form


@contextlib.contextmanager
def using(form: str) -> Iterator[None]:
  """Convolutions traced inside the `with` block take `form`."""
  previous = _form
  set_form(form)
  try:
    yield
  finally:
    set_form(previous)


def wants_matmul_form() -> bool:
  """Whether the chosen form, on this backend, is the matmul one."""
  return _form == 'matmul' or (_form == 'auto' and jax.default_backend() == 'cpu')


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


def takes_matmul_form(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                      dimension_numbers, feature_group_count) -> bool:
  """Whether this is a plain NHWC convolution, to be computed by `conv_as_matmul`."""
  plain = (not isinstance(padding, str)
           and all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
           and feature_group_count == 1 and lhs.ndim == 4
           and dimension_numbers == lax.conv_dimension_numbers(
               lhs.shape, rhs.shape, NHWC_HWIO))
  return plain and wants_matmul_form()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs) -> jax.Array:
  """`lax.conv_general_dilated`, computed by `conv_as_matmul` where that is wanted."""
  if not kwargs and takes_matmul_form(lhs, rhs, padding, lhs_dilation, rhs_dilation,
                                      dimension_numbers, feature_group_count):
    return conv_as_matmul(lhs, rhs, window_strides, padding, precision)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)
