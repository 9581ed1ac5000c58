"""Keras layers for binary weight networks (BWN) and XNOR-Networks (Rastegari et al., 2016).

Three families, conv and dense alike:

* ``QuantConv2D`` / ``QuantDense``: a Conv2D / Dense whose input and kernel pass through any
  quantizers (``input_quantizer``, ``kernel_quantizer``); no scaling of its own. Arguments and
  defaults match ``keras.layers.Conv2D`` / ``keras.layers.Dense``.
* ``BWNConv2D`` / ``BWNDense``: binary-weight layers, ``I (*) W ~ (I (*) sign(W)) alpha`` (eq. 4),
  real-valued inputs, ``alpha`` per output filter.
* ``BinConv2D`` / ``BinDense``: XNOR layers, eq. 11:
  ``I (*) W ~ (sign(I) (*) sign(W)) . K alpha``.

Latent real-valued weights live in ``kernel`` (HWIO for convs, ``[in, units]`` for dense),
exactly like Keras; the binary weights ``sign(kernel)`` and ``alpha`` are recomputed from them
at every step, and gradients reach them through the straight-through estimator.

Only ``data_format="channels_last"`` (NHWC) is supported.

SAME padding: the simulation convolves ``sign(I)`` padded with zeros, so a padded tap
contributes 0 to the binary dot product (neither +1 nor -1), and ``K`` is computed from ``|I|``
padded with zeros with the fixed divisor ``kh * kw``. The compiled XNOR kernels implement the
same rule, so both paths give the same dot products bit for bit (see ``keras_xnor.spec``).
"""

import functools

import keras
import tensorflow as tf

from keras_xnor import constraints as xnor_constraints
from keras_xnor import quantizers, spec

__all__ = [
    "QuantConv2D",
    "BWNConv2D",
    "BinConv2D",
    "QuantDense",
    "BWNDense",
    "BinDense",
    "BinaryActivation",
]

IMPLEMENTATIONS = ("auto", "simulation", "compiled")
_PACKAGE = "keras_xnor"


# --------------------------------------------------------------------------------------------
# Argument validation


def _positive_int(value, name, layer):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            "%s: `%s` must be a positive integer, got %r." % (layer, name, value)
        )
    return value


def _int_pair(value, name, layer, minimum=1):
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if (
        len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) for v in pair)
        or any(v < minimum for v in pair)
    ):
        raise ValueError(
            "%s: `%s` must be an int or a tuple of 2 ints >= %d, got %r."
            % (layer, name, minimum, value)
        )
    return pair


def _padding(value, layer):
    text = str(value).lower()
    if text not in ("valid", "same"):
        raise ValueError(
            "%s: `padding` must be 'valid' or 'same', got %r." % (layer, value)
        )
    return text


def _data_format(value, layer):
    value = keras.config.image_data_format() if value is None else str(value).lower()
    if value != "channels_last":
        raise ValueError(
            "%s supports only data_format='channels_last' (NHWC), got %r. Use channels_last: "
            "pass data_format='channels_last' (or call "
            "keras.config.set_image_data_format('channels_last')) and feed NHWC inputs "
            "(e.g. keras.layers.Permute((2, 3, 1)) turns NCHW into NHWC)." % (layer, value)
        )
    return value


def _implementation(value, layer):
    text = str(value).lower()
    if text not in IMPLEMENTATIONS:
        raise ValueError(
            "%s: `implementation` must be one of %s, got %r."
            % (layer, ", ".join(repr(i) for i in IMPLEMENTATIONS), value)
        )
    return text


def _kernel_scale(value, layer):
    text = "none" if value is None else str(value).lower()
    if text not in quantizers.KERNEL_SCALES:
        raise ValueError(
            "%s: `kernel_scale` must be one of %s, got %r."
            % (layer, ", ".join(repr(s) for s in quantizers.KERNEL_SCALES), value)
        )
    return text


# Compute dtypes the compiled ops serve. The ops compute in float32: a float16 / bfloat16
# input (a mixed precision policy) is cast to float32, which keeps its sign and |x| exactly,
# and the output is cast back to the compute dtype.
_COMPILED_DTYPES = (tf.float32, tf.float16, tf.bfloat16)


def _in_xla_context():
    """Whether the code being traced will be compiled by XLA (``tf.function(jit_compile=True)``),
    which has no kernel for the custom ops."""
    enclosing = getattr(tf.__internal__, "get_enclosing_xla_context", None)
    return enclosing is not None and enclosing() is not None


def _on_cpu(tensor):
    device = getattr(tensor, "device", "") or ""
    if device:
        return "CPU" in device.upper()
    return not tf.config.list_logical_devices("GPU")


# --------------------------------------------------------------------------------------------
# Shared pieces (small helpers rather than a class per mode)


def _floating(inputs, dtype):
    """``inputs`` as a tensor, cast to ``dtype`` (the layer's compute dtype) when not floating:
    integer or bool inputs compute in floats, as in keras Dense, rather than truncating the
    float kernel to the input's dtype."""
    inputs = tf.convert_to_tensor(inputs)
    return inputs if inputs.dtype.is_floating else tf.cast(inputs, dtype)


def _times(alpha, scale):
    """``alpha * scale`` where either may be None (1), in ``alpha``'s dtype."""
    if alpha is None or scale is None:
        return scale if alpha is None else alpha
    return alpha * tf.cast(scale, alpha.dtype)


class _QuantizedLayer(keras.layers.Layer):
    """Common state of the quantized layers (quantizers, bias, activation, binary gradient)
    and their forward pass, on one of two execution paths.

    The compiled ops serve a layer whose input quantizer is a sign and whose kernel quantizer
    is a sign or ``mean_abs_sign`` (``_check_compiled_possible``): the ±1 product runs on the
    op, the per-filter scales (the layer's alpha, a ``mean_abs_sign`` kernel's ``mean|W|``),
    K, the bias and ReLU after it. Training runs the op for the ±1 dot only (``_compiled_dot``)
    and the rest in TF; inference runs the fused op (``_fused_op``), which computes the whole
    layer but non-ReLU activations. A subclass provides both, and ``_product``.

    Mixed precision (``keras.config.set_dtype_policy("mixed_bfloat16")`` or
    ``"mixed_float16"``): the layer computes in the policy's dtype as any Keras layer does,
    and the compiled ops serve it too (they compute in float32 and return the compute dtype).
    """

    def _init_common(
        self,
        activation,
        use_bias,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        kernel_constraint,
        bias_constraint,
        input_quantizer,
        kernel_quantizer,
        binary_gradient,
    ):
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = xnor_constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_quantizer = quantizers.get_for_inputs(input_quantizer, type(self).__name__)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.binary_gradient = bool(binary_gradient)

    def _add_kernel_and_bias(self, kernel_shape, outputs):
        self.kernel = self.add_weight(
            name="kernel",
            shape=kernel_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=True,
            # Mixed precision: the kernel is read in float32 (not autocast), so the fused op
            # packs it once while it is unchanged, as under float32; the simulation casts it
            # to the compute dtype itself (_simulate).
            autocast=False,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(outputs,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
                trainable=True,
            )
        else:
            self.bias = None

    def _prepare_input(self, inputs):
        inputs = _floating(inputs, self.compute_dtype)
        if self.binary_gradient:
            inputs = quantizers.binary_gradient(inputs)
        return inputs

    def _quantize_input(self, x):
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def _quantize_kernel(self, kernel):
        return kernel if self.kernel_quantizer is None else self.kernel_quantizer(kernel)

    def _bias_tensor(self):
        return None if self.bias is None else tf.convert_to_tensor(self.bias)

    def _activate(self, outputs):
        return outputs if self.activation is None else self.activation(outputs)

    def _init_implementation(self, implementation):
        self.implementation = _implementation(implementation, type(self).__name__)
        if self.implementation == "compiled":
            self._refuse_compiled(self._check_compiled_possible())
        self._disable_jit_if_compiled()

    def _refuse_compiled(self, reasons):
        """Raises the ValueError of implementation='compiled' if there are reasons against it."""
        if reasons:
            raise ValueError(
                "%s(implementation='compiled') is not possible: %s. Use "
                "implementation='auto' or 'simulation'."
                % (type(self).__name__, "; ".join(reasons))
            )

    def _check_compiled_possible(self):
        reasons = []
        if not quantizers.is_sign_kind(self.input_quantizer):
            reasons.append("input_quantizer must be a sign quantizer (ste_sign/approx_sign/sign)")
        if not quantizers.is_scaled_sign(self.kernel_quantizer):
            reasons.append(
                "kernel_quantizer must be a sign quantizer (ste_sign/approx_sign/sign) or "
                "mean_abs_sign"
            )
        return reasons

    def _use_compiled(self, inputs):
        if self.implementation == "simulation":
            return False
        from keras_xnor import ops  # noqa: PLC0415 (optional native library)

        if self.implementation == "compiled":
            reasons = self._check_compiled_possible()
            if inputs.dtype not in _COMPILED_DTYPES:
                reasons.append(
                    "the compute dtype must be float32, float16 or bfloat16, got %s"
                    % inputs.dtype.name
                )
            if _in_xla_context():
                reasons.append("XLA (jit_compile=True) has no kernel for the custom op")
            self._refuse_compiled(reasons)
            if not ops.compiled_ops_available():
                load = getattr(ops, "load_ops", None)
                if load is not None:
                    load()  # raises the library's own explanation
                raise RuntimeError(
                    "%s(implementation='compiled'): the keras_xnor op library is not available. "
                    "Build it with `make ops` (or `pip install --no-build-isolation -e .`), or "
                    "use implementation='auto'." % type(self).__name__
                )
            return True
        return (
            inputs.dtype in _COMPILED_DTYPES
            and not self._check_compiled_possible()
            and not self._auto_prefers_simulation()
            and _on_cpu(inputs)
            and not _in_xla_context()
            and ops.compiled_ops_available()
        )

    def _disable_jit_if_compiled(self):
        # The custom op has no XLA kernel: keep model.fit(jit_compile="auto") off XLA when
        # this layer will run it (forced, or auto on a CPU-only machine with the library).
        # Sets supports_jit either way: BinConv2D / BinDense settle their implementation after
        # QuantConv2D / QuantDense's __init__ ran this with the default "auto".
        self.supports_jit = not self._runs_op_without_xla()

    def _runs_op_without_xla(self):
        if self.implementation == "simulation" or self._check_compiled_possible():
            return False
        if self.implementation == "auto" and self._auto_prefers_simulation():
            return False
        if self.implementation == "compiled":
            return True
        # list_physical_devices does not initialize the TF runtime (device configuration such
        # as memory growth must stay possible after building a model).
        if tf.config.list_physical_devices("GPU"):
            return False
        from keras_xnor import ops  # noqa: PLC0415

        return ops.compiled_ops_available()

    def _auto_prefers_simulation(self):
        """Whether "auto" runs the simulation though the ops could serve the layer, because
        they would be slower (a subclass says when)."""
        return False

    def _relu_fused(self):
        return self.activation is keras.activations.relu

    def _product(self, x, kernel):
        """The float product of (quantized) inputs and kernel: a convolution or a matmul."""
        raise NotImplementedError

    def _layer_alpha(self):
        """The layer's own per-filter scale, or None: the quantized layers have none (the BWN
        and XNOR layers override this with their ``get_alpha()``)."""
        return None

    def _alpha_kind(self):
        """What :meth:`_layer_alpha` is: "mean_abs" (eq. 6), "learned" or "none" (1)."""
        return "none"

    # The quantized kernel as q_k(W) = signs * scale, so that the ±1 part can run on the op
    # and the per-filter scale after it: for a mean_abs_sign kernel quantizer its ±1 part and
    # mean|W|, otherwise q_k(W) and no scale (None).

    def _kernel_signs(self, kernel):
        quantizer = self.kernel_quantizer
        if isinstance(quantizer, quantizers.MeanAbsSign):
            return quantizer.signs(kernel)
        return self._quantize_kernel(kernel)

    def _kernel_quantizer_scale(self, kernel):
        if isinstance(self.kernel_quantizer, quantizers.MeanAbsSign):
            return quantizers.mean_abs(kernel)
        return None

    def _finish(self, inputs, product, scale, bias, relu=False):
        """``product * scale [* K] [+ bias] [ReLU]`` in the inputs' dtype (eq. 11's output
        stage; ``scale`` None is 1, and K is the layer's scale map when ``use_k``)."""
        outputs = product
        if outputs.dtype != inputs.dtype:  # the compiled dot computes in float32
            outputs = tf.cast(outputs, inputs.dtype)
        if scale is not None:
            outputs = outputs * tf.cast(scale, outputs.dtype)
        if self.use_k:
            outputs = outputs * self._k_map(inputs)
        if bias is not None:
            outputs = outputs + bias
        if relu:
            outputs = tf.nn.relu(outputs)
        return outputs

    def _simulate(self, inputs, kernel, bias, relu=False, dot=None):
        """Pure-TF forward: ``(q_i(I) * q_k(W)) * alpha [* K] [+ b] [relu]``, ``*`` the layer's
        product (convolution or matmul), ``alpha`` :meth:`_layer_alpha` and ``K`` the scale
        map (:meth:`_k_map`, when ``use_k``).

        ``dot`` replaces the float product of the two ±1 tensors (the compiled paths pass
        ``_compiled_dot``); a ``mean_abs_sign`` kernel's ``mean|W|`` then multiplies its
        output instead of the kernel. The rest is the same either way.
        """
        if kernel.dtype != inputs.dtype:  # the float32 kernel under mixed precision
            kernel = tf.cast(kernel, inputs.dtype)
        alpha = self._layer_alpha()
        x = self._quantize_input(inputs)
        if dot is None:
            return self._finish(inputs, self._product(x, self._quantize_kernel(kernel)), alpha,
                                bias, relu)
        scale = _times(alpha, self._kernel_quantizer_scale(kernel))
        return self._finish(inputs, dot(x, self._kernel_signs(kernel)), scale, bias, relu)

    def _fused_scale(self, kernel):
        """The per-filter scale the fused op applies to the ±1 dot: the layer's alpha times the
        kernel quantizer's scale, ones when there is neither, and None when it is exactly
        ``mean|W|`` (the op that packs the kernel then provides it, read once while the kernel
        is unchanged, instead of a reduction at every call)."""
        kind = self._alpha_kind()
        signs_scaled = isinstance(self.kernel_quantizer, quantizers.MeanAbsSign)
        if kind != "learned" and (kind == "mean_abs") != signs_scaled:  # mean|W| exactly
            return None
        alpha = _times(self._layer_alpha(), self._kernel_quantizer_scale(kernel))
        return tf.ones(kernel.shape[-1:], tf.float32) if alpha is None else alpha

    def call(self, inputs, training=None):
        x = self._prepare_input(inputs)
        kernel = tf.convert_to_tensor(self.kernel)
        bias = self._bias_tensor()
        if not self._use_compiled(x):
            return self._activate(self._simulate(x, kernel, bias))
        if training:  # the op computes the ±1 product, TF the rest (as in the simulation)
            return self._activate(self._simulate(x, kernel, bias, dot=self._compiled_dot))
        # Inference: the fused op computes the whole layer but non-ReLU activations, with the
        # kernel packed once while it is unchanged; its gradient is the simulation's, written
        # here with the scale the op applies.
        relu = self._relu_fused()

        def simulation(i, k, a, b):
            if k.dtype != i.dtype:
                k = tf.cast(k, i.dtype)
            signs = self._kernel_signs(k)
            return self._finish(i, self._product(self._quantize_input(i), signs), a, b, relu)

        outputs = self._fused_op(x, kernel, self._fused_scale(kernel), bias, relu, simulation)
        return outputs if relu else self._activate(outputs)

    def _common_config(self):
        return {
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "input_quantizer": quantizers.serialize(self.input_quantizer),
            "kernel_quantizer": quantizers.serialize(self.kernel_quantizer),
            "binary_gradient": self.binary_gradient,
            "implementation": self.implementation,
        }


class _ScaledBinaryMixin:
    """Kernel scale ``alpha`` of the BWN / XNOR layers (the forward pass is
    ``_QuantizedLayer``'s, with this alpha). A subclass provides ``_k_map``.
    """

    def _add_alpha(self, outputs):
        if self.kernel_scale != "learned":
            self.alpha = None
            return
        kernel = self.kernel

        def initial_alpha(shape, dtype=None):
            # Start the learned scale where eq. 6 would put it.
            return tf.cast(tf.reshape(quantizers.mean_abs(kernel), shape), dtype or "float32")

        self.alpha = self.add_weight(
            name="alpha", shape=(outputs,), initializer=initial_alpha, trainable=True
        )

    def get_alpha(self):
        """The per-filter scale ``alpha`` used in the forward pass, shape ``[filters]``.

        ``"mean_abs"``: ``mean|W|`` of the current latent kernel (eq. 6); ``"learned"``: the
        layer's ``alpha`` weight; ``"none"``: ones.
        """
        kernel = tf.convert_to_tensor(self.kernel)
        if self.kernel_scale == "mean_abs":
            return quantizers.mean_abs(kernel)
        if self.kernel_scale == "learned":
            return tf.convert_to_tensor(self.alpha)
        return tf.ones(kernel.shape[-1:], dtype=kernel.dtype)

    def _layer_alpha(self):
        return self.get_alpha()

    def _alpha_kind(self):
        return self.kernel_scale

    def get_config(self):
        config = super().get_config()
        config["kernel_scale"] = self.kernel_scale
        return config


def _register(cls):
    return keras.saving.register_keras_serializable(package=_PACKAGE)(cls)


# --------------------------------------------------------------------------------------------
# Convolutions


class _XnorMixin:
    """What the XNOR layers (BinConv2D, BinDense) add to the BWN layers' config: ``use_k``."""

    def get_config(self):
        config = super().get_config()
        config.update({"use_k": self.use_k, "implementation": self.implementation})
        return config


# "auto" runs a grouped conv on the ops up to this many groups. Each group is an op call of
# its own, and past a few dozen TF's per-call cost outweighs the gain: measured 2026-11-24
# (Zen 1, 2 threads, batch 1, inference), the op path against the one grouped float conv was
# 1.5x faster with 64 groups of 1 channel (64@56), 1.26x with 64 groups of 4 (256@14), 0.66x
# with 256 groups (256@14) and 0.41x with 512 (512@7).
_MAX_AUTO_GROUPS = 64


def _grouped_convolution(convolution, groups, x, kernel):
    """A grouped ``convolution(x, kernel)`` (``kernel`` HWIO with I = C / groups) whose
    gradient works on CPU: TF computes the grouped conv in one op there but has no CPU kernel
    for its gradient ("Gradients for grouped convolutions are not supported on CPU"), so the
    gradient is that of the per-group convolutions on the channel slices, concatenated (the
    same sums). Keras' own Conv2D avoids the gap by compiling grouped convs with XLA."""

    @tf.custom_gradient
    def grouped(x, kernel):
        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                parts = zip(tf.split(x, groups, axis=-1), tf.split(kernel, groups, axis=-1))
                y = tf.concat([convolution(xg, kg) for xg, kg in parts], axis=-1)
            return tape.gradient(y, [x, kernel], output_gradients=dy)

        return convolution(x, kernel), grad

    return grouped(x, kernel)


@_register
class QuantConv2D(_QuantizedLayer):
    """2-D convolution with quantized input and kernel: ``q_i(I) (*) q_k(W) + b``.

    Arguments and defaults are those of ``keras.layers.Conv2D`` plus the quantizers; the
    latent real-valued kernel is ``kernel`` (HWIO). With both quantizers None it is a Conv2D.

    Args:
        filters: number of output channels (> 0).
        kernel_size: int or (kh, kw).
        strides: int or 2-tuple. ``strides > 1`` with ``dilation_rate > 1`` is rejected, as in
            ``keras.layers.Conv2D``.
        padding: "valid" or "same". With SAME, the *quantized* input is padded with zeros.
        data_format: None or "channels_last" (channels_first raises ValueError).
        dilation_rate: int or 2-tuple.
        groups: number of channel groups (as in Conv2D).
        activation, use_bias, *_initializer, *_regularizer, *_constraint: as in Conv2D.
        input_quantizer: quantizer of the input (see :func:`keras_xnor.quantizers.get`) or None.
        kernel_quantizer: quantizer of the kernel or None.
        binary_gradient: binarize the gradient w.r.t. the layer input in the backward pass,
            ``sign(g) * max|g|`` with the max per sample (XNOR-Net §3.2,
            :func:`keras_xnor.quantizers.binary_gradient`).
        implementation: "auto" (default), "simulation" or "compiled". With a sign input
            quantizer (``ste_sign``, ``approx_sign``), a sign or ``mean_abs_sign`` kernel
            quantizer and a kernel of at most 11x11, the ±1 product runs on the compiled XNOR
            op on CPU, as in :class:`BinConv2D` (one op per group when ``groups > 1``,
            which "auto" does up to 64 groups, beyond which the per-op cost makes the float
            conv faster; ``mean|W|`` multiplies the op's output). Same results; otherwise,
            and with "simulation", the float conv of the quantized tensors.
        **kwargs: keras.layers.Layer arguments (name, dtype, trainable, ...).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        input_quantizer=None,
        kernel_quantizer=None,
        binary_gradient=False,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        name = type(self).__name__
        self.filters = _positive_int(filters, "filters", name)
        self.kernel_size = _int_pair(kernel_size, "kernel_size", name)
        self.strides = _int_pair(strides, "strides", name)
        self.padding = _padding(padding, name)
        self.data_format = _data_format(data_format, name)
        self.dilation_rate = _int_pair(dilation_rate, "dilation_rate", name)
        self.groups = _positive_int(groups, "groups", name)
        if self.filters % self.groups:
            raise ValueError(
                "%s: filters (%d) must be divisible by groups (%d)." % (name, filters, groups)
            )
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "%s: `strides > 1` is not supported together with `dilation_rate > 1` (as in "
                "keras.layers.Conv2D). Received strides=%s, dilation_rate=%s; set one of them "
                "to 1." % (name, self.strides, self.dilation_rate)
            )
        self._init_common(
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
            input_quantizer,
            kernel_quantizer,
            binary_gradient,
        )
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self.use_k = False
        self._init_implementation(implementation)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "%s expects NHWC inputs of rank 4, got shape %s."
                % (type(self).__name__, input_shape)
            )
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                "%s: the channel dimension of the input must be known, got shape %s."
                % (type(self).__name__, input_shape)
            )
        if channels % self.groups:
            raise ValueError(
                "%s: input channels (%d) must be divisible by groups (%d)."
                % (type(self).__name__, channels, self.groups)
            )
        self.compute_output_shape(input_shape)  # validates the spatial size
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})
        kernel_shape = self.kernel_size + (channels // self.groups, self.filters)
        self._add_kernel_and_bias(kernel_shape, self.filters)
        self._build_extra()

    def _build_extra(self):
        pass

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        out = [
            quantizers.conv_output_length(n, k, s, d, self.padding)
            for n, k, s, d in zip(
                (height, width), self.kernel_size, self.strides, self.dilation_rate
            )
        ]
        if self.padding == "valid" and any(o is not None and o <= 0 for o in out):
            raise ValueError(
                "%s: input of spatial size %s is too small for kernel_size=%s, dilation_rate=%s "
                "with padding='valid'. Use padding='same' or a smaller kernel."
                % (type(self).__name__, (height, width), self.kernel_size, self.dilation_rate)
            )
        return (batch, out[0], out[1], self.filters)

    def _check_compiled_possible(self):
        return super()._check_compiled_possible() + self._kernel_size_problems()

    def _auto_prefers_simulation(self):
        return self.groups > _MAX_AUTO_GROUPS

    def _kernel_size_problems(self):
        """[] when the compiled conv serves this kernel size (and the exporter's op too)."""
        if max(self.kernel_size) <= spec.MAX_KERNEL_SIZE:
            return []
        return ["the compiled conv serves kernels up to %dx%d, got kernel_size=%s"
                % (spec.MAX_KERNEL_SIZE, spec.MAX_KERNEL_SIZE, self.kernel_size)]

    def _fused_op(self, x, kernel, alpha, bias, relu, simulation):
        from keras_xnor import ops  # noqa: PLC0415

        return ops.bin_conv2d(
            x,
            kernel,
            alpha,
            bias,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            use_k=self.use_k,
            relu=relu,
            simulation=simulation,
            groups=self.groups,
        )

    def _compiled_dot(self, xb, wb):
        from keras_xnor import ops  # noqa: PLC0415

        return ops.binary_conv2d_dot(
            xb,
            wb,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            convolution=self._product,
            groups=self.groups,
        )

    def _product(self, x, kernel):
        convolution = functools.partial(
            quantizers.convolution,
            strides=self.strides,
            padding=self.padding.upper(),
            dilations=self.dilation_rate,
        )
        if self.groups == 1:
            return convolution(x, kernel)
        return _grouped_convolution(convolution, self.groups, x, kernel)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "data_format": self.data_format,
                "dilation_rate": self.dilation_rate,
                "groups": self.groups,
            }
        )
        config.update(self._common_config())
        return config


@_register
class BWNConv2D(_ScaledBinaryMixin, QuantConv2D):
    """Binary-Weight-Network convolution (eq. 4): ``I (*) W ~ (I (*) sign(W)) alpha + b``.

    ``alpha`` per output filter: ``mean|W|`` over ``kh*kw*c_in`` recomputed from the latent
    kernel each step (eq. 6, ``kernel_scale="mean_abs"``), a trained weight ``alpha``
    (``"learned"``, initialised to eq. 6), or 1 (``"none"``). Inputs stay real-valued.

    Args:
        kernel_scale: "mean_abs" (default), "learned" or "none".
        kernel_quantizer: default "ste_sign".
        kernel_constraint: default "weight_clip" (latent weights clipped to [-1, 1]).
        Other arguments: see :class:`QuantConv2D`.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint="weight_clip",
        bias_constraint=None,
        input_quantizer=None,
        kernel_quantizer="ste_sign",
        binary_gradient=False,
        kernel_scale="mean_abs",
        implementation="auto",
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            binary_gradient=binary_gradient,
            implementation=implementation,
            **kwargs,
        )
        self.kernel_scale = _kernel_scale(kernel_scale, type(self).__name__)
        self.use_k = False

    def _build_extra(self):
        self._add_alpha(self.filters)

    def _k_map(self, inputs):
        return quantizers.conv_k_map(
            inputs, self.kernel_size, self.strides, self.padding, self.dilation_rate
        )


@_register
class BinConv2D(_XnorMixin, BWNConv2D):
    """XNOR-Net convolution, eq. 11: ``I (*) W ~ (sign(I) (*) sign(W)) . K alpha (+ b)``.

    The layer binarizes its own input and computes the scale map ``K`` from the *real-valued*
    input (``K = mean_c|I| (*) box(kh, kw)``, :func:`keras_xnor.quantizers.conv_k_map`): it is
    the BinActiv + BinConv pair of Fig. 3 in one layer. Put BatchNorm directly before it (block
    order B-A-C-P); a :class:`BinaryActivation` in front would make ``K == 1``.

    Execution: ``implementation="auto"`` runs the compiled XNOR + popcount op
    (``keras_xnor.ops.bin_conv2d``) when the op library is available, the input quantizer is
    a sign quantizer and the kernel quantizer a sign or ``mean_abs_sign`` (its ``mean|W|``
    joins alpha), the kernel is at most 11x11 (``spec.MAX_KERNEL_SIZE``; a larger one runs the
    simulation), the compute dtype is float32, float16 or bfloat16 (mixed precision: the op
    computes in float32 and returns the compute dtype) and the layer runs on CPU outside XLA
    (``tf.function(jit_compile=True)`` has no kernel for the op); otherwise the float
    simulation (an ordinary conv of ±1 tensors, then the scales). Inference runs the fused
    op (dot, alpha, K, bias, ReLU in one kernel). Training runs the op for the ±1
    dot only and applies alpha, K and the bias in TF; the dot's gradient is that of the float
    conv, which needs only its inputs, so a training step costs the op plus the two backprop
    convs instead of the simulation's three float convs. ``"simulation"`` and ``"compiled"``
    force a path. Both paths give the same dot products bit for bit, the same outputs up to
    float rounding of the scales, and the same gradients. The op fuses ReLU only; other
    activations run after it.

    Args:
        use_k: multiply by the K map (default True); False drops it (``K = 1``).
        kernel_scale: "mean_abs" (eq. 6, default), "learned" or "none".
        implementation: "auto", "simulation" or "compiled".
        input_quantizer, kernel_quantizer: default "ste_sign".
        kernel_constraint: default "weight_clip".
        binary_gradient: see :class:`QuantConv2D`.
        Other arguments: see :class:`QuantConv2D`.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        data_format=None,
        dilation_rate=(1, 1),
        groups=1,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint="weight_clip",
        bias_constraint=None,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        binary_gradient=False,
        kernel_scale="mean_abs",
        use_k=True,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            groups=groups,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            binary_gradient=binary_gradient,
            kernel_scale=kernel_scale,
            **kwargs,
        )
        self.use_k = bool(use_k)
        if self.groups != 1:
            raise ValueError(
                "BinConv2D supports groups=1 only (eq. 11's K map averages |I| over all input "
                "channels), got groups=%d. For grouped binary convolutions use BWNConv2D or "
                "QuantConv2D(input_quantizer='ste_sign', kernel_quantizer='mean_abs_sign')."
                % self.groups
            )
        self._init_implementation(implementation)


# --------------------------------------------------------------------------------------------
# Fully connected


@_register
class QuantDense(_QuantizedLayer):
    """Dense layer with quantized input and kernel: ``q_i(x) . q_k(W) + b``.

    Arguments and defaults follow ``keras.layers.Dense`` (without LoRA / int8 quantization),
    plus the quantizers. Inputs of rank > 2 are transformed along their last axis.

    Args:
        units: number of outputs (> 0).
        activation, use_bias, *_initializer, *_regularizer, *_constraint: as in Dense.
        input_quantizer, kernel_quantizer: quantizers or None.
        binary_gradient, implementation: see :class:`QuantConv2D` (the compiled op serves
            a sign input quantizer with a sign or ``mean_abs_sign`` kernel quantizer).
        **kwargs: keras.layers.Layer arguments.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        input_quantizer=None,
        kernel_quantizer=None,
        binary_gradient=False,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.units = _positive_int(units, "units", type(self).__name__)
        self._init_common(
            activation,
            use_bias,
            kernel_initializer,
            bias_initializer,
            kernel_regularizer,
            bias_regularizer,
            kernel_constraint,
            bias_constraint,
            input_quantizer,
            kernel_quantizer,
            binary_gradient,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.use_k = False
        self._init_implementation(implementation)

    def build(self, input_shape):
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "%s: the last dimension of the input must be known, got shape %s."
                % (type(self).__name__, input_shape)
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: features})
        self._add_kernel_and_bias((features, self.units), self.units)
        self._build_extra()

    def _build_extra(self):
        pass

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def _fused_op(self, x, kernel, alpha, bias, relu, simulation):
        from keras_xnor import ops  # noqa: PLC0415

        flat = x if x.shape.rank == 2 else tf.reshape(x, [-1, tf.shape(x)[-1]])
        outputs = ops.bin_dense(
            flat, kernel, alpha, bias, use_k=self.use_k, relu=relu, simulation=simulation
        )
        if x.shape.rank != 2:
            outputs = tf.reshape(outputs, tf.concat([tf.shape(x)[:-1], [self.units]], axis=0))
        return outputs

    def _compiled_dot(self, xb, wb):
        from keras_xnor import ops  # noqa: PLC0415

        flat = xb if xb.shape.rank == 2 else tf.reshape(xb, [-1, tf.shape(xb)[-1]])
        outputs = ops.binary_dense_dot(flat, wb, matmul=tf.matmul)
        if xb.shape.rank == 2:
            return outputs
        return tf.reshape(outputs, tf.concat([tf.shape(xb)[:-1], [self.units]], axis=0))

    def _product(self, x, kernel):
        if x.shape.rank == 2:
            return tf.matmul(x, kernel)
        return tf.tensordot(x, kernel, axes=[[x.shape.rank - 1], [0]])

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        config.update(self._common_config())
        return config


@_register
class BWNDense(_ScaledBinaryMixin, QuantDense):
    """Binary-weight dense layer: ``x . W ~ (x . sign(W)) alpha + b``, alpha per unit (eq. 6).

    Args:
        kernel_scale: "mean_abs" (default), "learned" or "none".
        kernel_quantizer: default "ste_sign"; kernel_constraint: default "weight_clip".
        Other arguments: see :class:`QuantDense`.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint="weight_clip",
        bias_constraint=None,
        input_quantizer=None,
        kernel_quantizer="ste_sign",
        binary_gradient=False,
        kernel_scale="mean_abs",
        implementation="auto",
        **kwargs,
    ):
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            binary_gradient=binary_gradient,
            implementation=implementation,
            **kwargs,
        )
        self.kernel_scale = _kernel_scale(kernel_scale, type(self).__name__)
        self.use_k = False

    def _build_extra(self):
        self._add_alpha(self.units)

    def _k_map(self, inputs):
        return quantizers.dense_k(inputs)


@_register
class BinDense(_XnorMixin, BWNDense):
    """XNOR fully connected layer: ``x . W ~ (sign(x) . sign(W)) K alpha + b``.

    A fully connected layer is a convolution whose kernel covers the whole input, so ``K`` is
    one number per sample, ``mean|x|`` over the features (per position along the last axis for
    inputs of rank > 2). Execution paths as in :class:`BinConv2D`.

    Args:
        use_k: multiply by K (default True).
        kernel_scale: "mean_abs" (default), "learned" or "none".
        implementation: "auto", "simulation" or "compiled".
        input_quantizer, kernel_quantizer: default "ste_sign"; kernel_constraint: "weight_clip".
        Other arguments: see :class:`QuantDense`.
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint="weight_clip",
        bias_constraint=None,
        input_quantizer="ste_sign",
        kernel_quantizer="ste_sign",
        binary_gradient=False,
        kernel_scale="mean_abs",
        use_k=True,
        implementation="auto",
        **kwargs,
    ):
        super().__init__(
            units,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            activity_regularizer=activity_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            input_quantizer=input_quantizer,
            kernel_quantizer=kernel_quantizer,
            binary_gradient=binary_gradient,
            kernel_scale=kernel_scale,
            **kwargs,
        )
        self.use_k = bool(use_k)
        self._init_implementation(implementation)


# --------------------------------------------------------------------------------------------
# Activation


@_register
class BinaryActivation(keras.layers.Layer):
    """BinActiv of Fig. 3: ``sign(x)`` with a straight-through gradient, shape-preserving.

    For custom blocks, e.g. in front of a :class:`QuantConv2D` or a BWN-style conv. Not needed
    (and harmful) in front of :class:`BinConv2D` / :class:`BinDense`: they binarize their own
    input and compute ``K`` from the real-valued input, so a sign in front makes ``K == 1``;
    put BatchNorm directly before them instead.

    Args:
        quantizer: the sign quantizer, default "ste_sign" (see :func:`keras_xnor.quantizers.get`).
        binary_gradient: binarize the incoming gradient (§3.2), see :class:`QuantConv2D`.
        **kwargs: keras.layers.Layer arguments.
    """

    def __init__(self, quantizer="ste_sign", binary_gradient=False, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = quantizers.get_for_inputs(quantizer, "BinaryActivation")
        if self.quantizer is None:
            raise ValueError(
                "BinaryActivation: `quantizer` must not be None; use e.g. 'ste_sign' or "
                "'approx_sign' (or drop the layer)."
            )
        self.binary_gradient = bool(binary_gradient)

    def call(self, inputs):
        x = _floating(inputs, self.compute_dtype)
        if self.binary_gradient:
            x = quantizers.binary_gradient(x)
        return self.quantizer(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "quantizer": quantizers.serialize(self.quantizer),
                "binary_gradient": self.binary_gradient,
            }
        )
        return config
