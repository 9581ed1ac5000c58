"""Keras model -> .tflite with bitpacked binary layers (custom ops) and float builtins.

How it works. The model is cloned (``keras.models.clone_model``) and every XNOR layer is
replaced by an export twin that calls the raw ``KerasXnorBinConv2D`` / ``KerasXnorBinDense`` TF
op with **constant** operands computed once in numpy. XNOR layers: :class:`keras_xnor.BinConv2D`
/ :class:`keras_xnor.BinDense` with sign quantizers, and any quantized conv / dense
(``QuantConv2D``, ``QuantDense``, the BWN layers) with a sign input quantizer and a sign or
``mean_abs_sign`` kernel quantizer (no K map; a grouped conv becomes one op per group, if
it has at least 16 input channels per group; with fewer the float grouped conv is faster):

* ``filter``: ``sign(W)`` packed to int32 words, OHWI for conv / ``[units, words]`` for dense,
  32 channels per word, channel ``c`` in bit ``c % 32`` of word ``c // 32``, set bit = -1,
  ``sign(0) = +1``, padding bits 0 (``keras_xnor.spec``). 1 bit per weight instead of 32.
* ``alpha``: the layer's own per-filter scale (``layer.get_alpha()``: eq. 6 ``mean|W|``, the
  learned weight, or ones; ones for a QuantConv2D / QuantDense), times ``mean|W|`` when the
  kernel quantizer is ``mean_abs_sign``.
* ``bias``: the layer's bias (zeros without one).

The TFLite converter (``allow_custom_ops``) keeps these ops as custom ops whose
custom_options are a FlexBuffer map of the op attributes; everything else becomes builtins.
The layers say what they are (their class); nothing is recognised by graph shape.

Precision. A model built under a float16 / bfloat16 policy (mixed precision) or with
``keras.config.set_floatx("float64")`` is exported in float32: every cloned float layer gets
the float32 policy (a half- or double-precision Conv2D or MatMul would otherwise reach the
converter as an unresolvable custom op), float inputs become float32, and the twins compute
in float32.

BatchNorm folding. If a BatchNormalization (inference statistics, channel axis last) is the
only consumer of a binary layer's output and the binary layer has no activation, then with
``s = gamma / sqrt(var + eps)``::

    BN(dot * alpha * K + b) = dot * (alpha * s) * K + (s * (b - mean) + beta)

exactly (up to float rounding), so the BN is dropped and its scale/shift go into alpha/bias.
"""

import contextlib
import functools
import io
import numbers
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_xnor import ops, quantizers, spec
from keras_xnor.layers import BinConv2D, BinDense, BWNConv2D, BWNDense, QuantConv2D, QuantDense
from keras_xnor.tflite_export._inspect import custom_codes

def _raw_ops():
    """The loaded TF op library (module with keras_xnor_bin_conv2d / keras_xnor_bin_dense)."""
    try:
        return ops.load_ops()  # cached by ops
    except ops.CompiledOpsError as error:
        raise RuntimeError(
            "keras_xnor.tflite_export needs the keras-xnor TF op library to emit the binary "
            "custom ops: %s" % error
        ) from error


# --------------------------------------------------------------------------------------------
# Numpy packing (the exporter's half of the bit contract in keras_xnor/spec.py)


def pack_signs(values):
    """Packs ``sign(values)`` along the last axis into int32 words (keras_xnor.spec layout).

    Args:
        values: float array ``[..., C]``.

    Returns:
        int32 array ``[..., ceil(C / 32)]``; bit ``c % 32`` of word ``c // 32`` is 1 iff
        ``values[..., c] < 0`` (so 0, -0.0 and NaN give +1 = bit 0); padding bits are 0.
    """
    values = np.asarray(values, dtype=np.float32)
    channels = values.shape[-1]
    words = spec.packed_words(channels)
    bits = (values < 0).astype(np.uint8)
    pad = words * spec.BITS_PER_WORD - channels
    if pad:
        bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (pad,), np.uint8)], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # 4 bytes per word, LSB first
    packed = np.ascontiguousarray(packed).reshape(values.shape[:-1] + (words, 4))
    return packed.view("<u4").reshape(values.shape[:-1] + (words,)).astype(np.uint32).view(np.int32)


def _is_relu(activation):
    return activation is keras.activations.relu


def _is_linear(activation):
    return activation is None or activation is keras.activations.linear


_NOT_FLOAT32 = ("float16", "bfloat16", "float64")

# TensorFlow's rule for a root name scope (tensorflow/python/framework/ops.py).
_SCOPE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*$")


def _not_float32(layer):
    """Whether `layer` computes or keeps weights in float16 / bfloat16 (a mixed precision or
    half policy) or float64 (``floatx`` float64). The export computes every float layer in
    float32 instead: TFLite's builtins (and XNNPACK) run float32 graphs, and a half- or
    double-precision Conv2D or MatMul would come out of the converter as an unresolvable
    custom op."""
    policy = getattr(layer, "dtype_policy", None)
    dtypes = (getattr(policy, "compute_dtype", None), getattr(policy, "variable_dtype", None))
    return any(d in _NOT_FLOAT32 for d in dtypes)


# A grouped binary conv becomes one op per group only with at least this many input
# channels per group. Below it the float grouped conv (XNNPACK) is faster: measured
# 2026-11-24 (Zen 1, 2 threads, batch 1, this exporter's .tflite against a Conv2D with the
# same groups), the per-group ops ran 2.9-4.5x faster with 32 channels per group, 0.80-1.26x
# with 16, 0.25-0.37x with 8 and 0.14-0.21x with 2-4 (one 8-channel op alone takes 0.2 ms at
# 56x56: the kernels are built for whole 32-channel words). docs/SPEED.md has the table.
_MIN_GROUP_CHANNELS = 16


def _xnor_layer(layer):
    """Whether `layer` multiplies binary inputs by binary weights, so that the exporter should
    make it a bitpacked custom op: every BinConv2D / BinDense, and any quantized conv / dense
    (QuantConv2D, BWNConv2D, ...) with a sign input quantizer and a sign or mean_abs_sign
    kernel quantizer, except a grouped conv with fewer than ``_MIN_GROUP_CHANNELS`` input
    channels per group (exported as its float simulation, which runs faster). The layers say
    this through their quantizers; nothing is recognised by graph shape."""
    if isinstance(layer, (BinConv2D, BinDense)):
        return True
    if isinstance(layer, QuantConv2D) and (
        layer.groups > 1 and layer.kernel.shape[2] < _MIN_GROUP_CHANNELS
    ):
        return False
    return (
        isinstance(layer, (QuantConv2D, QuantDense))
        and quantizers.is_sign_kind(layer.input_quantizer)
        and quantizers.is_scaled_sign(layer.kernel_quantizer)
    )


def _exportable(layer):
    """Why an XNOR layer (:func:`_xnor_layer`) cannot become the custom op ("" when it can).

    BinConv2D / BinDense: the reasons their compiled path is not possible (quantizers, kernel
    size; they refuse groups and channels_first when they are made), the rule the layer
    follows in TF. Other quantized layers: the kernel size (a grouped conv becomes one op per
    group, which is exact: these layers have no K map)."""
    if isinstance(layer, (BinConv2D, BinDense)):
        return "; ".join(layer._check_compiled_possible())  # noqa: SLF001 (same project)
    if isinstance(layer, QuantConv2D):
        return "; ".join(layer._kernel_size_problems())  # noqa: SLF001 (same project)
    return ""


def _xnor_alpha(layer):
    """Per-filter scale of an XNOR layer's ``sign(I) * sign(W)``: the layer's alpha (BWN /
    XNOR layers: eq. 6, learned or ones) times ``mean|W|`` if its kernel quantizer is
    mean_abs_sign."""
    # The layer's own split of its scale (the same pieces its compiled path multiplies),
    # combined here in float64 for the BatchNorm folding.
    kernel = tf.convert_to_tensor(layer.kernel)
    layer_alpha = layer._layer_alpha()  # noqa: SLF001 (same project)
    alpha = np.ones(kernel.shape[-1])
    if layer_alpha is not None:
        alpha = np.asarray(layer_alpha, np.float64)
    scale = layer._kernel_quantizer_scale(kernel)  # noqa: SLF001
    if scale is not None:
        alpha = alpha * np.asarray(scale, np.float64)
    return alpha.reshape(-1)


# --------------------------------------------------------------------------------------------
# Export twins: layers that emit the raw op with constant packed weights


class _ExportBinConv2D(keras.layers.Layer):
    """Inference-only twin of an XNOR conv (BinConv2D, or a QuantConv2D / BWNConv2D with a sign
    input quantizer): KerasXnorBinConv2D with constant operands.

    A grouped conv (QuantConv2D with ``groups > 1``, no K map) becomes one op per group on
    its slice of the input channels, concatenated: the same sums as the grouped conv.
    ``filter_words`` is then a list with one packed filter per group.
    """

    def __init__(self, source, filter_words, alpha, bias, relu, activation, **kwargs):
        super().__init__(name=source.name, dtype="float32", **kwargs)
        self._groups = int(getattr(source, "groups", 1))
        self._filters_words = filter_words if self._groups > 1 else [filter_words]
        self._alphas = np.split(np.asarray(alpha, np.float32), self._groups)
        self._biases = np.split(np.asarray(bias, np.float32), self._groups)
        self._relu = relu
        self._activation = activation
        self._strides = [int(s) for s in source.strides]
        self._dilations = [int(d) for d in source.dilation_rate]
        self._padding = source.padding.upper()
        self._use_k = bool(getattr(source, "use_k", False))
        self._in_channels = int(source.kernel.shape[2])  # per group
        self._source_output_shape = source.compute_output_shape

    def call(self, inputs, mask=None):  # noqa: ARG002 (functional graphs may pass one)
        x = tf.cast(inputs, tf.float32)
        parts = [x] if self._groups == 1 else tf.split(x, self._groups, axis=-1)
        outputs = [
            _raw_ops().keras_xnor_bin_conv2d(
                part,
                tf.constant(words),
                tf.constant(alpha),
                tf.constant(bias),
                strides=self._strides,
                padding=self._padding,
                dilations=self._dilations,
                in_channels=self._in_channels,
                use_k=self._use_k,
                relu=self._relu,
            )
            for part, words, alpha, bias in zip(parts, self._filters_words, self._alphas,
                                                self._biases)
        ]
        outputs = outputs[0] if self._groups == 1 else tf.concat(outputs, axis=-1)
        return outputs if self._activation is None else self._activation(outputs)

    def compute_output_shape(self, input_shape):
        return self._source_output_shape(input_shape)


class _ExportBinDense(keras.layers.Layer):
    """Inference-only twin of an XNOR dense layer (BinDense, or a QuantDense / BWNDense with a
    sign input quantizer): KerasXnorBinDense with constant operands."""

    def __init__(self, source, filter_words, alpha, bias, relu, activation, **kwargs):
        super().__init__(name=source.name, dtype="float32", **kwargs)
        self._filter = filter_words
        self._alpha = np.asarray(alpha, np.float32)
        self._bias = np.asarray(bias, np.float32)
        self._relu = relu
        self._activation = activation
        self._use_k = bool(getattr(source, "use_k", False))
        self._in_features = int(source.kernel.shape[0])
        self._units = int(source.units)

    def call(self, inputs, mask=None):  # noqa: ARG002 (functional graphs may pass one)
        x = tf.cast(inputs, tf.float32)
        rank = x.shape.rank
        flat = x if rank == 2 else tf.reshape(x, [-1, self._in_features])
        outputs = _raw_ops().keras_xnor_bin_dense(
            flat,
            tf.constant(self._filter),
            tf.constant(self._alpha),
            tf.constant(self._bias),
            in_channels=self._in_features,
            use_k=self._use_k,
            relu=self._relu,
        )
        if rank != 2:
            outputs = tf.reshape(outputs, tf.concat([tf.shape(x)[:-1], [self._units]], axis=0))
        return outputs if self._activation is None else self._activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self._units,)


def _bwn_kernel(layer):
    """``alpha * sign(W)`` of a BWN layer (eq. 6 or learned alpha), as a float32 constant."""
    kernel = np.asarray(layer.kernel, np.float32)
    signs = np.where(kernel < 0, -1.0, 1.0).astype(np.float32)  # sign(0) = +1 (spec)
    return signs * np.asarray(layer.get_alpha(), np.float32).reshape(-1)


class _BakedBWNWeights:
    """Builds like its Keras base class, then sets the constant alpha*sign(W) (and bias)."""

    def _bake(self, source):
        self._constants = [_bwn_kernel(source)]
        if source.bias is not None:
            self._constants.append(np.asarray(source.bias, np.float32))

    def build(self, input_shape):
        super().build(input_shape)
        self.set_weights(self._constants)


class _ExportBWNConv2D(_BakedBWNWeights, keras.layers.Conv2D):
    """Inference twin of a BWNConv2D: a plain Conv2D whose kernel is the constant alpha*sign(W).

    BWN keeps real inputs, so there is no XNOR op to run; what matters is that the binarization
    happens once here instead of at every TFLite invocation (XNNPACK then runs the conv).
    """

    def __init__(self, source):
        super().__init__(
            source.filters,
            source.kernel_size,
            strides=source.strides,
            padding=source.padding,
            dilation_rate=source.dilation_rate,
            groups=source.groups,
            activation=source.activation,
            use_bias=source.bias is not None,
            name=source.name,
            dtype="float32",
        )
        self._bake(source)


class _ExportBWNDense(_BakedBWNWeights, keras.layers.Dense):
    """Inference twin of a BWNDense: a plain Dense with the constant kernel alpha*sign(W)."""

    def __init__(self, source):
        super().__init__(
            source.units,
            activation=source.activation,
            use_bias=source.bias is not None,
            name=source.name,
            dtype="float32",
        )
        self._bake(source)


def _bwn_twin(layer):
    """The export twin of a pure BWN layer (real inputs, sign kernel), or None."""
    if isinstance(layer, (BinConv2D, BinDense)) or layer.input_quantizer is not None:
        return None
    if not quantizers.is_sign_kind(layer.kernel_quantizer):
        return None
    if isinstance(layer, BWNConv2D):
        return _ExportBWNConv2D(layer)
    if isinstance(layer, BWNDense):
        return _ExportBWNDense(layer)
    return None


class _FoldedAway(keras.layers.Layer):
    """Stands in for a BatchNormalization folded into the preceding binary layer."""

    def call(self, inputs, training=None, mask=None):  # noqa: ARG002 (BN's call signature)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


# --------------------------------------------------------------------------------------------
# BatchNorm folding plan


def _foldable_bn(bn, rank):
    if not isinstance(bn, keras.layers.BatchNormalization):
        return False
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    if axis is None or axis not in (-1, rank - 1):
        return False
    return not getattr(bn, "synchronized", False) and not getattr(bn, "renorm", False)


def _call_sites(layer):
    """(input tensors, output tensors) of every call of `layer` in a graph; None if unknown.

    Keras 3 keeps one inbound node per call; ``layer.input`` only shows the first, so a shared
    layer's other calls would be invisible through the public properties.
    """
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes is None:
        return None
    try:
        return [(list(node.input_tensors), list(node.output_tensors)) for node in nodes]
    except AttributeError:
        return None


def _fold_plan(model):
    """Maps id(binary layer) -> BatchNormalization to fold, for eligible pairs.

    Eligible: the binary layer is exportable, called once, and has no activation; its output is
    not a model output (of the model or a nested one) and is consumed by exactly one call of
    one layer, a BatchNormalization over the last axis that is itself called once. Folding is
    skipped entirely if the graph cannot be inspected.
    """
    layers = _all_layers(model)
    sites = {}
    consumers = {}
    # Every operation of the graphs consumes tensors: layers, and keras.ops calls such as
    # `x + y` or keras.ops.concatenate, which are not layers.
    for layer in _all_operations(model):
        calls = _call_sites(layer)
        if calls is None:
            return {}
        sites[id(layer)] = calls
        for inputs, _ in calls:
            for tensor in inputs:
                consumers.setdefault(id(tensor), []).append(layer)
    # Outputs of the model and of every nested model are consumed by someone we cannot see.
    outputs = set()
    for graph in [model] + [layer for layer in layers if isinstance(layer, keras.Model)]:
        try:
            outputs.update(id(t) for t in tf.nest.flatten(graph.outputs))
        except (AttributeError, ValueError):
            return {}
    plan = {}
    for layer in layers:
        if not _xnor_layer(layer) or _exportable(layer):
            continue
        if not _is_linear(layer.activation) or len(sites[id(layer)]) != 1:
            continue
        out = sites[id(layer)][0][1]
        if len(out) != 1 or id(out[0]) in outputs:
            continue
        users = consumers.get(id(out[0]), [])
        if len(users) != 1 or len(sites[id(users[0])]) != 1:
            continue
        bn_inputs = sites[id(users[0])][0][0]
        rank = len(out[0].shape)
        if len(bn_inputs) == 1 and bn_inputs[0] is out[0] and _foldable_bn(users[0], rank):
            plan[id(layer)] = users[0]
    return plan


def _is_graph_model(model):
    """A Sequential or Functional model: one whose layer graph the exporter can read."""
    return isinstance(model, keras.Sequential) or hasattr(model, "_run_through_graph")


def _all_layers(model, into_subclassed=False):
    """The layers of `model` and of the graph models nested in it (and of nested subclassed
    models too with `into_subclassed`; otherwise such a model is one layer, whose weights
    are copied as a whole)."""
    result = []
    for layer in model.layers:
        result.append(layer)
        if isinstance(layer, keras.Model) and (into_subclassed or _is_graph_model(layer)):
            result.extend(_all_layers(layer, into_subclassed))
    return result


def _all_operations(model):
    """The operations of `model`'s graph and of the graph models nested in it: the layers and
    the keras.ops calls (a Sequential has only layers)."""
    result = []
    for operation in getattr(model, "operations", model.layers):
        result.append(operation)
        if isinstance(operation, keras.Model) and _is_graph_model(operation):
            result.extend(_all_operations(operation))
    return result


def _bn_scale_shift(bn):
    mean = np.asarray(bn.moving_mean, np.float64)
    var = np.asarray(bn.moving_variance, np.float64)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(bn.epsilon))
    return scale, beta - scale * mean


def _make_twin(layer, bn):
    """The export twin of an XNOR layer (:func:`_xnor_layer`), with `bn` (or None) folded in."""
    kernel = np.asarray(layer.kernel, np.float32)
    alpha = _xnor_alpha(layer)
    units = kernel.shape[-1]
    bias = np.zeros(units) if layer.bias is None else np.asarray(layer.bias, np.float64)
    if bn is not None:
        scale, shift = _bn_scale_shift(bn)
        alpha = alpha * scale
        bias = bias * scale + shift
    relu = _is_relu(layer.activation)
    activation = None if (relu or _is_linear(layer.activation)) else layer.activation
    if isinstance(layer, QuantConv2D):
        ohwi = np.transpose(kernel, (3, 0, 1, 2))  # HWIO -> OHWI, packed along I
        if layer.groups > 1:  # one filter per group: its slice of the output channels
            words = [pack_signs(part) for part in np.split(ohwi, layer.groups)]
        else:
            words = pack_signs(ohwi)
        return _ExportBinConv2D(layer, words, alpha, bias, relu, activation)
    return _ExportBinDense(layer, pack_signs(kernel.T), alpha, bias, relu, activation)


# --------------------------------------------------------------------------------------------
# Public API


def export_model(model, fold_batch_norm=True):
    """The inference clone of `model` that the converter sees (binary layers as raw ops).

    Args:
        model: a built Keras Sequential or Functional model.
        fold_batch_norm: fold eligible BatchNormalization layers into the preceding binary
            layer's alpha/bias (see the module docstring).

    Returns:
        A new Keras model; binary layers are replaced by export twins, folded BatchNorm layers
        by a pass-through, and the other layers by copies made from their configs (a layer that
        cannot be rebuilt from its config, such as a Lambda of a Python lambda, is shared).
    """
    if not isinstance(model, keras.Model):
        raise TypeError("convert() expects a keras.Model, got %r" % type(model).__name__)
    if not model.built:
        raise ValueError(
            "convert(): the model is not built; call it on data or build it with an input "
            "shape first."
        )
    if not _is_graph_model(model):
        raise ValueError(
            "convert(): %s is a subclassed model; export needs a Sequential or Functional "
            "model (its layer graph is what tells which BatchNorm can be folded). Rebuild it "
            "with the functional API." % type(model).__name__
        )
    # TF names the variables (and the SavedModel the converter writes) after the layers; a name
    # it refuses fails deep inside the converter and leaves Keras' name-scope stack behind.
    bad_names = [layer.name for layer in _all_layers(model, into_subclassed=True)
                 if not _SCOPE_NAME.match(layer.name)]
    if bad_names:
        raise ValueError(
            "convert(): TensorFlow cannot export layers named %s: a layer name must start with a "
            "letter, digit or '.', and contain only letters, digits and _ . \\ / > -. Rename "
            "them (the name= argument of the layer)." % ", ".join(repr(n) for n in bad_names)
        )
    plan = _fold_plan(model) if fold_batch_norm else {}
    folded = {id(bn) for bn in plan.values()}
    problems = []

    def clone_layer(layer):
        if _xnor_layer(layer):
            reason = _exportable(layer)
            if reason:
                problems.append("%s (%s)" % (layer.name, reason))
            else:
                return _make_twin(layer, plan.get(id(layer)))
        bwn = _bwn_twin(layer) if isinstance(layer, (BWNConv2D, BWNDense)) else None
        if bwn is not None:
            return bwn
        if id(layer) in folded:
            # The BN's own name: it is not in the clone, and a "_folded" suffix could clash.
            return _FoldedAway(name=layer.name, dtype="float32")
        try:
            config = layer.get_config()
            if _not_float32(layer):
                config["dtype"] = "float32"
            if isinstance(layer, (QuantConv2D, QuantDense)):
                # Exported as its float simulation (not an XNOR layer, or one the op cannot
                # serve): keep the TF op out of the traced graph.
                config["implementation"] = "simulation"
            return layer.__class__.from_config(config)
        except Exception as error:  # noqa: BLE001 (whatever the layer's own code raises)
            if _not_float32(layer):
                raise ValueError(
                    "convert(): layer %r (%s) computes in %s and cannot be rebuilt in float32 "
                    "from its config (%s: %s); give it a get_config() that from_config() "
                    "accepts, or build the model under the float32 policy."
                    % (layer.name, type(layer).__name__, layer.dtype_policy.name,
                       type(error).__name__, str(error).strip().splitlines()[0])
                ) from error
            # Not rebuildable from its config (a Lambda of a Python lambda, refused by Keras'
            # safe mode; a custom layer without get_config): the clone calls the layer itself.
            # Its weights are left as they are; the call adds a node to its call history.
            return layer

    clone = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    # Layers cloned from their config start with fresh weights: copy the trained ones (names
    # are kept by from_config and by the twins).
    # Pair layers by position (clone_model keeps the graph order); fall back to names.
    # A nested subclassed model is one layer here: its sublayers, made anew by from_config,
    # have new automatic names, but it holds its weights in the same order.
    sources, targets = _all_layers(model), _all_layers(clone)
    pairs = list(zip(sources, targets))
    if len(sources) != len(targets) or any(t.name != s.name for s, t in pairs):
        by_name = {layer.name: layer for layer in sources}
        pairs = [(by_name.get(t.name), t) for t in targets]
    for source, target in pairs:
        if isinstance(target, (_ExportBinConv2D, _ExportBinDense, _ExportBWNConv2D,
                               _ExportBWNDense, _FoldedAway)) or _is_graph_model(target):
            continue
        if source is not None and source is not target and source.weights:
            target.set_weights(source.get_weights())
            # State derived from the weights (an adapted Normalization's mean and variance),
            # which Keras' own weight loading recomputes the same way.
            if hasattr(target, "finalize_state"):
                target.finalize_state()
    if problems:
        import warnings  # noqa: PLC0415

        warnings.warn(
            "keras_xnor.tflite_export: these binary layers are exported as float simulation "
            "(not bitpacked): " + ", ".join(problems),
            stacklevel=3,
        )
    return clone


def convert(model, *, fold_batch_norm=True, batch_size=None, input_shapes=None,
            float_weights="float32"):
    """Converts a Keras model to a .tflite flatbuffer with bitpacked binary layers.

    Binary layers (``BinConv2D``, ``BinDense`` with sign quantizers; quantized conv / dense
    layers with a sign input and a sign or mean_abs_sign kernel quantizer) become the custom ops
    ``KerasXnorBinConv2D`` / ``KerasXnorBinDense`` with int32-packed constant weights (about 32x
    smaller than float); all other layers become TFLite builtins (run by XNNPACK). Run the
    result with :class:`keras_xnor.tflite_export.Interpreter`, which loads the keras-xnor
    delegate.

    Args:
        model: a built Sequential or Functional Keras model.
        fold_batch_norm: fold a BatchNorm that directly and solely follows a binary layer into
            its alpha/bias (module docstring).
        batch_size: fixed batch dimension for the inputs, or None for a dynamic batch
            (resize with ``interpreter.resize_tensor_input`` then ``allocate_tensors``).
        input_shapes: optional list of full input shapes (with batch) overriding the model's,
            in the order of ``model.inputs`` (for dict inputs: sorted by key).
        float_weights: "float32" (default) or "float16": store the weights of the float
            layers (first/last layers, projections) as float16, halving their size; they are
            computed in float32 at run time (XNNPACK). The packed binary weights are unchanged;
            the converter also stores the binary layers' alpha/bias as float16 (dequantized
            at load time), a relative change of at most 2^-11 of the scales.

    Returns:
        The .tflite flatbuffer as bytes.

    Raises:
        ValueError: bad arguments, a subclassed model, layer names TF refuses, or a model
            with TF ops that have no TFLite builtin (which would fail to load).
        RuntimeError: the TFLite converter failed.
    """
    if float_weights not in ("float32", "float16"):
        raise ValueError(
            "convert(): float_weights must be 'float32' or 'float16', got %r" % (float_weights,)
        )
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            "convert(): batch_size must be an int >= 1, or None for a dynamic batch; got %r"
            % (batch_size,)
        )
    clone = export_model(model, fold_batch_norm=fold_batch_norm)
    # One tensor, a list, or a dict of inputs (a Sequential has one, and no `input` until called).
    structure = clone.inputs if isinstance(clone, keras.Sequential) else clone.input
    inputs = tf.nest.flatten(structure)  # (a dict's in sorted key order)
    if isinstance(structure, dict) and len(structure) == len(inputs):
        names = sorted(structure)  # the keys the caller feeds by
    else:
        names = [t.name for t in inputs]
    if input_shapes is not None:
        if len(input_shapes) != len(inputs):
            raise ValueError(
                "convert(): input_shapes has %d shapes for %d model inputs"
                % (len(input_shapes), len(inputs))
            )
        shapes = [tuple(s) for s in input_shapes]
    else:
        # (None: a dynamic batch, even where the model's inputs have a fixed one.)
        shapes = [(None if batch_size is None else int(batch_size),) + tuple(t.shape[1:])
                  for t in inputs]
    # Float inputs of a float16/bfloat16/float64 model are fed as float32, as the clone computes.
    dtypes = ["float32" if t.dtype in _NOT_FLOAT32 else t.dtype for t in inputs]
    # The converter cannot trace a Keras 3 model with dict inputs (it takes a tf_keras path
    # and fails with "'NoneType' object is not callable"): such a model is wrapped in one
    # with a list of inputs, named by the keys.
    if isinstance(structure, dict) or any(
        tuple(shape) != tuple(t.shape) or dtype != t.dtype
        for shape, dtype, t in zip(shapes, dtypes, inputs)
    ):
        # The names are the .tflite signature's input keys.
        new_inputs = [
            keras.Input(batch_shape=s, dtype=d, name=n)
            for s, d, n in zip(shapes, dtypes, names)
        ]
        outputs = clone(tf.nest.pack_sequence_as(structure, new_inputs))
        clone = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs, outputs)
    # from_keras_model freezes the float weights into constants (from_concrete_functions would
    # keep them as resource variables).
    converter = tf.lite.TFLiteConverter.from_keras_model(clone)
    converter.allow_custom_ops = True
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if float_weights == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    # Under Keras 3 the converter writes the model out with an ExportArchive, which prints its
    # endpoint listing ("Saved artifact at ...") to stdout; that temporary directory is none of
    # the caller's business, so the listing is dropped. Logging (stderr) is left alone.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = converter.convert()
    except Exception as error:  # the converter's messages are long; keep ours first
        cause = _saved_model_error(clone) if "'NoneType' object is not callable" in str(
            error) else None
        if cause is not None:
            raise RuntimeError(
                "keras_xnor.tflite_export.convert: the TFLite converter failed: it could not "
                "write the model out as a SavedModel (%s: %s)" % (type(cause).__name__, cause)
            ) from cause
        raise RuntimeError(
            "keras_xnor.tflite_export.convert: the TFLite converter failed: %s" % error
        ) from error
    _check_custom_ops(data)
    return data


def _check_custom_ops(data):
    """Refuses a converted model with custom ops other than keras-xnor's. ``allow_custom_ops``
    (which the keras-xnor ops need) also lets any TF op without a TFLite builtin through as a
    custom op that no runtime resolves: the file would fail only when it is loaded."""
    delegated = {spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP, spec.PACK_BITS_OP}
    unknown = sorted(custom_codes(data) - delegated)
    if unknown:
        raise ValueError(
            "keras_xnor.tflite_export.convert: the model uses TensorFlow ops that TFLite has "
            "no builtin for: %s. The .tflite would fail to load (\"unresolved custom op\"). "
            "Replace them in the model with ops TFLite supports." % ", ".join(unknown)
        )


def _saved_model_error(model):
    """The error TFLite's converter swallows when it cannot write a Keras 3 model out as a
    SavedModel (an ExportArchive of its inference call), or None if that works.

    The converter then falls back to a tf_keras path, which fails with "'NoneType' object is
    not callable" and hides the cause; this repeats the write to show it.
    """
    signature = [tf.TensorSpec(t.shape, t.dtype, name=t.name) for t in model.inputs]
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                             [signature] if len(signature) > 1 else signature)
        with tempfile.TemporaryDirectory() as directory, \
                contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(directory)
    except Exception as error:  # noqa: BLE001 (reported to the caller as the cause)
        return error
    return None
