"""Wrappers for the compiled ops (placeholder: the TF op work replaces this module).

Contract the layers rely on:

* ``compiled_ops_available() -> bool``
* ``bin_conv2d(inputs, kernel, alpha, bias, *, strides, padding, dilation_rate, use_k, relu,
  simulation)``
* ``bin_dense(inputs, kernel, alpha, bias, *, use_k, relu, simulation)``
"""


def compiled_ops_available():
    return False
