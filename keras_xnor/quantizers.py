"""Quantizers: binarization of activations and weights, and their gradients.

Everything here is pure TensorFlow (it is the float simulation and the oracle of the compiled
ops) and follows the one sign convention of :mod:`keras_xnor.spec`::

    sign(x) = -1 if x < 0 else +1        (sign(0) = sign(-0.0) = +1, sign(NaN) = +1)

Activation / weight quantizers (forward is always ``sign``; they differ in the backward pass):

* :func:`ste_sign`: straight-through estimator (XNOR-Net §3.1-3.2, after Hubara et al.):
  ``d sign(r) / dr := 1_{|r| <= 1}``.
* :func:`approx_sign`: Bi-Real Net's piecewise-polynomial derivative
  ``2 + 2r`` on ``[-1, 0)``, ``2 - 2r`` on ``[0, 1)``, ``0`` elsewhere.

Each exists as a function and as a serializable class (:class:`SteSign`, :class:`ApproxSign`),
and by name: ``"ste_sign"``, ``"approx_sign"``, ``"sign"`` (alias of ``"ste_sign"``), plus
``"mean_abs_sign"`` (:class:`MeanAbsSign`, the BWN weight quantizer ``alpha * sign(W)``).
:func:`get` turns any of these identifiers into a quantizer.

Scaling factors of the paper:

* :func:`mean_abs`: the optimal weight scale of eq. 6, ``alpha = ||W||_l1 / n`` per output filter.
* :func:`conv_k_map` / :func:`dense_k`: the activation scale map ``K = A (*) k`` of §3.2 (Fig. 2),
  with ``A = mean_c |I|`` and ``k`` a ``kh x kw`` box filter of value ``1 / (kh * kw)``.

And the backward-only transform of §3.2 "binary gradient": :func:`binary_gradient`.
"""

import numbers

import keras
import tensorflow as tf

__all__ = [
    "sign",
    "ste_sign",
    "approx_sign",
    "binary_gradient",
    "mean_abs",
    "conv_k_map",
    "dense_k",
    "Quantizer",
    "SteSign",
    "ApproxSign",
    "MeanAbsSign",
    "get",
    "get_for_inputs",
    "serialize",
    "deserialize",
    "is_sign_kind",
    "is_scaled_sign",
    "precision",
    "KERNEL_SCALES",
]

KERNEL_SCALES = ("mean_abs", "learned", "none")


def sign(x):
    """Sign with the project convention: -1 iff ``x < 0``, else +1 (so sign(0) = +1, NaN -> +1).

    ``tf.sign`` maps 0 to 0, which is not a binary value; never use it on activations or weights.
    This function has no gradient (use :func:`ste_sign` or :func:`approx_sign` to train).

    Args:
        x: a float tensor.

    Returns:
        A tensor of ``x``'s dtype and shape holding -1 and +1.
    """
    x = tf.convert_to_tensor(x)
    one = tf.ones([], dtype=x.dtype)
    return tf.where(x < 0, -one, one)


def ste_sign(x, clip_value=1.0):
    """Binarize with the straight-through estimator.

    Forward: ``q = sign(x)``. Backward: ``dL/dx = dL/dq * 1_{|x| <= clip_value}``
    (XNOR-Net §3.1-3.2 after Hubara et al.: ``d sign(r) / dr = 1_{|r| <= 1}``).
    ``clip_value=None`` passes the gradient unchanged.

    Args:
        x: float tensor.
        clip_value: positive float or None.

    Returns:
        ``sign(x)`` (values in {-1, +1}).
    """

    @tf.custom_gradient
    def _ste_sign(x):
        def grad(dy):
            if clip_value is None:
                return dy
            return tf.where(tf.abs(x) <= clip_value, dy, tf.zeros_like(dy))

        return sign(x), grad

    return _ste_sign(tf.convert_to_tensor(x))


def approx_sign(x):
    """Binarize with the Bi-Real Net approximate derivative (Liu et al., ECCV 2018, ApproxSign).

    Forward: ``sign(x)``. Backward: ``dL/dx = dL/dq * d(x)`` with
    ``d(x) = 2 + 2x`` for ``-1 <= x < 0``, ``2 - 2x`` for ``0 <= x < 1`` and ``0`` otherwise,
    i.e. ``d(x) = max(0, 2 - 2|x|)``: the derivative of a piecewise quadratic that hugs sign.

    Args:
        x: float tensor.

    Returns:
        ``sign(x)``.
    """

    @tf.custom_gradient
    def _approx_sign(x):
        def grad(dy):
            return dy * tf.nn.relu(2.0 - 2.0 * tf.abs(x))

        return sign(x), grad

    return _approx_sign(tf.convert_to_tensor(x))


def binary_gradient(x):
    """Identity in the forward pass; binarizes the incoming gradient in the backward pass (§3.2).

    Backward: ``dL/dx := sign(g) * max|g|`` with ``g = dL/d(output)`` and the maximum taken
    **per sample**, over every axis but the first (batch) one, as XNOR-Net scales the binarized
    gradient by its largest magnitude. Here ``sign(g)`` is ternary on purpose: an entry whose
    gradient is exactly 0 (e.g. cut by the STE clip) stays 0 instead of becoming ``+max|g|``.

    Args:
        x: float tensor of rank >= 1 (rank 1: the maximum is over the whole tensor).

    Returns:
        ``x`` unchanged.
    """

    @tf.custom_gradient
    def _binary_gradient(x):
        def grad(dy):
            rank = dy.shape.rank
            axes = list(range(1, rank)) if rank and rank > 1 else None
            scale = tf.reduce_max(tf.abs(dy), axis=axes, keepdims=True)
            return tf.sign(dy) * scale

        return tf.identity(x), grad

    return _binary_gradient(tf.convert_to_tensor(x))


def mean_abs(kernel):
    """Optimal scale of a binary approximation ``W ~ alpha * sign(W)`` per output filter (eq. 6).

    ``alpha* = (1/n) * sum_i |W_i|`` minimizes ``||W - alpha B||^2`` with ``B = sign(W)``; the
    last axis of ``kernel`` indexes the output filters (HWIO conv kernels, [in, out] dense
    kernels) and the mean runs over all other axes, so ``n = kh * kw * c_in`` (or ``c_in``).

    Args:
        kernel: float tensor, rank >= 1, output filters on the last axis.

    Returns:
        float tensor of shape ``[filters]``.
    """
    kernel = tf.convert_to_tensor(kernel)
    axes = list(range(kernel.shape.rank - 1))
    return tf.reduce_mean(tf.abs(kernel), axis=axes)


def _pair(value):
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)


def conv_output_length(length, kernel, stride, dilation, padding):
    """Output length of one spatial axis, TensorFlow's SAME/VALID rule (``length`` an int, a
    scalar tensor or None, which gives None; padding "SAME" or "VALID", any case)."""
    if length is None:
        return None
    if padding.upper() == "SAME":
        return (length + stride - 1) // stride
    effective = (kernel - 1) * dilation + 1
    return (length - effective) // stride + 1 if length >= effective else 0


def explicit_pads(size, k, stride, dilation, padding):
    """(before, after) zero padding of one spatial axis, TensorFlow's SAME/VALID rule (``size``
    an int or a scalar tensor; padding "SAME" or "VALID", any case)."""
    if padding.upper() == "VALID":
        return 0, 0
    out = (size + stride - 1) // stride
    total = (out - 1) * stride + (k - 1) * dilation + 1 - size
    total = max(total, 0) if isinstance(total, int) else tf.maximum(total, 0)
    return total // 2, total - total // 2


def _spatial_size(x, axis):
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def convolution(x, kernel, strides, padding, dilations):
    """``tf.nn.convolution`` of NHWC ``x`` with HWIO ``kernel``, working around two bugs of
    TensorFlow 2.21's oneDNN convolution (on by default on AVX-512 CPUs):

    * an input with no elements gave a tensor of the input's shape (e.g. SAME, stride 2, zero
      height): when a static dimension of ``x`` is 0 this returns the zeros of the output
      shape (no gradient flows: there is nothing to differentiate);
    * unequal strides (1, s > 1) with one input channel, batch >= 2 and an output one pixel
      wide gave values of ~1e28 (the K map's 1-channel box filter hit it): a conv with unequal
      strides runs at stride 1 on the explicitly padded input and is subsampled (the same
      sums, s_h * s_w times the work, for these rare layers only). So does one with stride
      > 1 and dilation > 1, which tf.nn.convolution rejects.

    Args:
        strides, dilations: 2-tuples; padding: "SAME" or "VALID".
    """
    if 0 not in tuple(x.shape):
        if strides[0] == strides[1] and (max(strides) == 1 or max(dilations) == 1):
            return tf.nn.convolution(x, kernel, strides=list(strides), padding=padding,
                                     dilations=list(dilations))
        pads = [(0, 0)]
        for axis in (1, 2):
            pads.append(explicit_pads(_spatial_size(x, axis), kernel.shape[axis - 1],
                                      strides[axis - 1], dilations[axis - 1], padding))
        y = tf.nn.convolution(tf.pad(x, pads + [(0, 0)]), kernel, strides=[1, 1],
                              padding="VALID", dilations=list(dilations))
        return y[:, :: strides[0], :: strides[1], :]
    sizes = [tf.shape(x)[0]]
    for axis in (1, 2):
        sizes.append(conv_output_length(_spatial_size(x, axis), kernel.shape[axis - 1],
                                        strides[axis - 1], dilations[axis - 1], padding))
    sizes.append(kernel.shape[-1])
    return tf.zeros(tf.stack(sizes), dtype=x.dtype)


def conv_k_map(inputs, kernel_size, strides=(1, 1), padding="valid", dilation_rate=(1, 1)):
    """Activation scale map of XNOR-Net §3.2: ``K = A (*) k``, one beta per output position.

    ``A = (1/c) sum_c |I_c|`` (shape ``[N, H, W, 1]``) is convolved with a ``kh x kw`` box
    filter of value ``1 / (kh * kw)`` using the conv's own strides, padding and dilation, so
    ``K[n, y, x]`` is the mean of ``|I|`` over exactly the sub-tensor the conv sees there.
    Computed as ``(box sum of A) / (kh * kw)``. With SAME padding a padded tap contributes 0
    and the divisor stays ``kh * kw`` (it is not the number of valid taps), like the binary
    dot in which a padded tap contributes 0; the compiled kernels use the same rule.

    Args:
        inputs: float tensor ``[N, H, W, C]`` (channels_last), the real-valued layer input.
        kernel_size: int or (kh, kw).
        strides: int or 2-tuple.
        padding: "valid" or "same" (any case).
        dilation_rate: int or 2-tuple.

    Returns:
        float tensor ``[N, H_out, W_out, 1]``.
    """
    inputs = tf.convert_to_tensor(inputs)
    kh, kw = _pair(kernel_size)
    a = tf.reduce_mean(tf.abs(inputs), axis=-1, keepdims=True)
    box = tf.ones([kh, kw, 1, 1], dtype=inputs.dtype)
    box_sum = convolution(a, box, _pair(strides), padding.upper(), _pair(dilation_rate))
    return box_sum / tf.cast(kh * kw, inputs.dtype)


def dense_k(inputs):
    """Activation scale of a fully connected layer: ``K = mean |x|`` over the features.

    An FC layer is a conv whose kernel covers the whole input, so K reduces to one beta per
    sample (per position for rank > 2 inputs).

    Args:
        inputs: float tensor ``[..., C]``.

    Returns:
        float tensor ``[..., 1]``.
    """
    return tf.reduce_mean(tf.abs(tf.convert_to_tensor(inputs)), axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Serializable quantizer objects


@keras.saving.register_keras_serializable(package="keras_xnor")
class Quantizer:
    """Base of the serializable quantizers: a callable ``x -> q(x)`` with a config.

    Attributes:
        precision: bits per quantized value (``None`` for full precision).
        sign_kind: True when the forward pass is exactly ``sign`` with the project convention
            (values in {-1, +1}, no scale), which is what the compiled XNOR kernels compute.
        kernel_only: True for a quantizer of kernels only (its scale reduces over every axis
            but the last); layers refuse it for their inputs (:func:`get_for_inputs`).
    """

    precision = None
    sign_kind = False
    kernel_only = False

    def __call__(self, x):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join("%s=%r" % kv for kv in self.get_config().items())
        return "%s(%s)" % (type(self).__name__, args)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


def _clip_value(owner, clip_value):
    """A straight-through estimator's clip value: a positive float, or None (no clip)."""
    if clip_value is None:
        return None
    if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real) or not (
        clip_value > 0
    ):
        raise ValueError(
            "%s: clip_value must be a positive number or None, got %r." % (owner, clip_value)
        )
    return float(clip_value)


@keras.saving.register_keras_serializable(package="keras_xnor")
class SteSign(Quantizer):
    """``sign`` with the clipped straight-through gradient (see :func:`ste_sign`).

    Args:
        clip_value: the gradient passes where ``|x| <= clip_value`` (None: everywhere).
    """

    precision = 1
    sign_kind = True

    def __init__(self, clip_value=1.0):
        self.clip_value = _clip_value("SteSign", clip_value)

    def __call__(self, x):
        return ste_sign(x, clip_value=self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


@keras.saving.register_keras_serializable(package="keras_xnor")
class ApproxSign(Quantizer):
    """``sign`` with the Bi-Real Net piecewise-polynomial gradient (see :func:`approx_sign`)."""

    precision = 1
    sign_kind = True

    def __call__(self, x):
        return approx_sign(x)


@keras.saving.register_keras_serializable(package="keras_xnor")
class MeanAbsSign(Quantizer):
    """BWN weight quantizer ``W~ = alpha * sign(W)``, ``alpha = mean|W|`` per output filter (eq. 6).

    Meant for kernels (output filters on the last axis), e.g.
    ``QuantConv2D(..., kernel_quantizer="mean_abs_sign")``. The gradient is the exact derivative
    of ``alpha(W) * ste_sign(W)``, i.e. the paper's
    ``dC/dW_i = dC/dW~_i (1/n + alpha 1_{|W_i|<=1})``
    plus the cross terms through ``alpha``. Not sign-kind (the values are scaled).

    Args:
        clip_value: STE clip of the sign part.
    """

    precision = 1
    sign_kind = False
    # Its scale is a mean over every axis but the last: for activations, over the batch too.
    kernel_only = True

    def __init__(self, clip_value=1.0):
        self.clip_value = _clip_value("MeanAbsSign", clip_value)

    def __call__(self, x):
        return mean_abs(x) * self.signs(x)

    def signs(self, x):
        """The ±1 part ``ste_sign(x)`` (the output is ``mean_abs(x) * signs(x)``)."""
        return ste_sign(x, clip_value=self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


_ALIASES = {
    "ste_sign": SteSign,
    "sign": SteSign,
    "approx_sign": ApproxSign,
    "mean_abs_sign": MeanAbsSign,
}
_FUNCTIONS = {ste_sign: SteSign, approx_sign: ApproxSign}


def _valid_names():
    return ", ".join(repr(n) for n in sorted(_ALIASES))


def get(identifier):
    """Resolve a quantizer identifier.

    Args:
        identifier: ``None`` (no quantization), a name (``"ste_sign"``, ``"approx_sign"``,
            ``"sign"``, ``"mean_abs_sign"``; case-insensitive), a config dict as produced by
            :func:`serialize`, a :class:`Quantizer`, or any callable ``x -> q(x)``.

    Returns:
        ``None``, a :class:`Quantizer` instance, or the given callable.

    Raises:
        ValueError: unknown name or unsupported type; the message lists the valid names.
    """
    if identifier is None:
        return None
    if isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        cls = _ALIASES.get(identifier.strip().lower())
        if cls is None:
            raise ValueError(
                "Unknown quantizer %r. Use one of %s, None (no quantization), a "
                "keras_xnor.quantizers.Quantizer instance or a callable."
                % (identifier, _valid_names())
            )
        return cls()
    if isinstance(identifier, dict):
        obj = keras.saving.deserialize_keras_object(identifier)
        if not callable(obj):
            raise ValueError(
                "Quantizer config %r did not deserialize to a callable." % (identifier,)
            )
        return obj
    for function, cls in _FUNCTIONS.items():
        if identifier is function:
            return cls()
    if callable(identifier):
        return identifier
    raise ValueError(
        "Could not interpret quantizer %r: expected None, one of %s, a config dict, a "
        "Quantizer or a callable." % (identifier, _valid_names())
    )


def get_for_inputs(identifier, owner):
    """:func:`get` for a quantizer of activations (a layer's input, BinaryActivation): it also
    refuses the quantizers meant for kernels only (``kernel_only``, e.g. ``mean_abs_sign``,
    whose scale would be a mean over the whole batch, so that one sample's output would depend
    on the others)."""
    quantizer = get(identifier)
    if getattr(quantizer, "kernel_only", False):
        raise ValueError(
            "%s: %r is a kernel quantizer: its scale is a mean over every axis but the last, "
            "which for activations includes the batch. Quantize inputs with a sign quantizer "
            "('ste_sign', 'approx_sign'); the XNOR layers scale them per position with K "
            "(use_k)." % (owner, quantizer)
        )
    return quantizer


def serialize(quantizer):
    """Config of a quantizer (``None`` stays ``None``); inverse of :func:`deserialize`."""
    if quantizer is None:
        return None
    return keras.saving.serialize_keras_object(quantizer)


def deserialize(config):
    """Inverse of :func:`serialize`."""
    return get(config)


def is_sign_kind(quantizer):
    """True when ``quantizer``'s forward pass is exactly ``sign`` (as in the XNOR kernels)."""
    return bool(getattr(quantizer, "sign_kind", False))


def is_scaled_sign(quantizer):
    """True when ``quantizer(W)`` is ``sign(W)`` times one scale per output filter: the sign
    kind (scale 1) and :class:`MeanAbsSign` (``mean|W|``). Such a kernel quantizer runs on
    the XNOR ops, its scale multiplying their output."""
    return is_sign_kind(quantizer) or isinstance(quantizer, MeanAbsSign)


def precision(quantizer, default=32):
    """Bits per value produced by ``quantizer`` (``default`` for None / unknown callables)."""
    if quantizer is None:
        return default
    bits = getattr(quantizer, "precision", None)
    return default if bits is None else bits
