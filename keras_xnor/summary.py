"""Model summary for binary networks: bits, parameters, memory, operations and speedup.

For each layer (nested models are expanded) :func:`summary` reports, **per sample**:

* ``input_bits`` / ``weight_bits``: precision of the operands of the layer's multiply
  (1 for sign quantizers, 32 for float; ``None`` for layers without a kernel). They come from
  the layer's own quantizers: a ``QuantConv2D`` fed by a ``BinaryActivation`` counts as XNOR
  only with ``input_quantizer="ste_sign"`` (a no-op on values that are already ±1).
* ``binary_params``: 1-bit weights (latent kernels of binary layers; stored as sign bits).
  ``float_params``: every other weight (bias, learned alpha, BatchNorm statistics, float kernels).
  ``scale_params``: per-filter ``alpha = mean|W|`` values that are not weights during training
  (recomputed from the kernel, eq. 6) but are stored at deployment.
* ``memory_bytes``: deployed storage, ``binary_params / 8 + 4 * (float_params + scale_params)``.
* ``binary_ops``: 1-bit x 1-bit multiply-accumulates (XNOR + popcount), ``c * N_W`` per output
  value of an XNOR layer. ``float_macs``: all other multiply-accumulates of conv / dense layers
  (including BWN layers, whose products are sign flips of real inputs).
  ``scaling_ops``: the non-binary operations of an XNOR layer, one per output value
  (the ``* K alpha`` of eq. 11).
* ``speedup``: theoretical speedup of an XNOR layer over its float twin (§4.1),
  ``S = 64 c N_W / (c N_W + 64)`` with ``c`` input channels and ``N_W = kh * kw``: 64 binary
  operations per CPU instruction and one non-binary operation per output value. ``None`` for
  other layers.

Totals add the layers up; ``compression_ratio`` is the float32 size of all parameters divided
by ``memory_bytes``, and the model ``speedup`` is
``(binary_ops + float_macs) / (binary_ops / 64 + scaling_ops + float_macs)``, the §4.1 model
applied to every multiply-accumulate of the network.
"""

import dataclasses
import math
from typing import List, Optional, Tuple

import keras

from keras_xnor import layers as xnor_layers
from keras_xnor import quantizers

__all__ = ["LayerSummary", "ModelSummary", "summary", "xnor_speedup"]

FLOAT_BITS = 32


def xnor_speedup(channels, kernel_area):
    """§4.1: ``S = 64 c N_W / (c N_W + 64)`` for ``c`` channels and a kernel of ``N_W`` taps."""
    cnw = channels * kernel_area
    return 64.0 * cnw / (cnw + 64.0)


@dataclasses.dataclass
class LayerSummary:
    """Numbers of one layer (per sample). See the module docstring for definitions."""

    name: str
    type: str
    output_shape: Optional[Tuple]
    input_bits: Optional[int]
    weight_bits: Optional[int]
    binary_params: int
    float_params: int
    scale_params: int
    memory_bytes: float
    binary_ops: int
    float_macs: int
    scaling_ops: int
    speedup: Optional[float]

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ModelSummary:
    """Per-layer rows plus totals. Iterating / indexing goes over the layer rows."""

    layers: List[LayerSummary]
    binary_params: int
    float_params: int
    scale_params: int
    memory_bytes: float
    float32_memory_bytes: float
    compression_ratio: float
    binary_ops: int
    float_macs: int
    scaling_ops: int
    speedup: float

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, index):
        if isinstance(index, str):
            for row in self.layers:
                if row.name == index:
                    return row
            raise KeyError(index)
        return self.layers[index]

    def to_dict(self):
        return dataclasses.asdict(self)

    def table(self):
        """The summary as text (what :func:`summary` prints)."""
        return _format(self)


def _count(variables):
    return int(sum(math.prod(v.shape) for v in variables))


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError, RuntimeError):
        pass
    try:
        return tuple(layer.compute_output_shape(tuple(layer.input.shape)))
    except Exception:  # noqa: BLE001 (layer not called symbolically: shape unknown)
        return None


def _known_prod(dims):
    if dims is None or any(d is None for d in dims):
        return None
    return math.prod(dims)


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


_CONV_TYPES = (xnor_layers.QuantConv2D, keras.layers.Conv2D)
_DENSE_TYPES = (xnor_layers.QuantDense, keras.layers.Dense)


def _input_shape(layer):
    try:
        return tuple(layer.input.shape)
    except (AttributeError, ValueError, RuntimeError):
        return None


def _other_float_macs(layer, shape):
    """Multiply-accumulates of the float Keras layers that have them, else None."""
    L = keras.layers
    if shape is None:
        return None
    positions = _known_prod(shape[1:-1])
    if positions is None:
        return None
    if isinstance(layer, (L.Conv1D, L.Conv3D)):
        return positions * math.prod(layer.kernel.shape)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return positions * math.prod(layer.kernel.shape)
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return positions * (
            math.prod(layer.depthwise_kernel.shape) + math.prod(layer.pointwise_kernel.shape)
        )
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        in_positions = _known_prod((_input_shape(layer) or (None, None))[1:-1])
        return None if in_positions is None else in_positions * math.prod(layer.kernel.shape)
    return None


def _layer_summary(layer):
    shape = _output_shape(layer)
    weights = list(layer.weights)
    row = dict(
        name=layer.name,
        type=type(layer).__name__,
        output_shape=shape,
        input_bits=None,
        weight_bits=None,
        binary_params=0,
        float_params=_count(weights),
        scale_params=0,
        binary_ops=0,
        float_macs=0,
        scaling_ops=0,
        speedup=None,
    )
    if not layer.built:
        return row
    if not isinstance(layer, _CONV_TYPES + _DENSE_TYPES):
        macs = _other_float_macs(layer, shape)
        if macs is not None:
            row.update(input_bits=FLOAT_BITS, weight_bits=FLOAT_BITS, float_macs=macs)
        return row

    kernel = layer.kernel
    kernel_shape = tuple(kernel.shape)
    fan_in = math.prod(kernel_shape[:-1])  # c_in/groups * kh * kw, or in_features
    outputs = kernel_shape[-1]
    input_bits = quantizers.precision(getattr(layer, "input_quantizer", None), FLOAT_BITS)
    weight_bits = quantizers.precision(getattr(layer, "kernel_quantizer", None), FLOAT_BITS)
    row["input_bits"], row["weight_bits"] = input_bits, weight_bits
    if weight_bits == 1:
        row["binary_params"] = _count([kernel])
        row["float_params"] -= row["binary_params"]
        if getattr(layer, "kernel_scale", None) == "mean_abs" or isinstance(
            getattr(layer, "kernel_quantizer", None), quantizers.MeanAbsSign
        ):
            row["scale_params"] = outputs

    if shape is None:
        return row
    output_values = _known_prod(shape[1:])
    if output_values is None:
        return row
    macs = output_values * fan_in
    if input_bits == 1 and weight_bits == 1:
        row["binary_ops"] = macs
        row["scaling_ops"] = output_values
        row["speedup"] = xnor_speedup(fan_in, 1)
    else:
        row["float_macs"] = macs
    return row


def _build(model):
    if not model.built:
        raise ValueError(
            "keras_xnor.summary: the model is not built. Build it first (give it an "
            "keras.Input, or call model.build(input_shape) / call it on data)."
        )
    rows = []
    for layer in _leaf_layers(model):
        row = _layer_summary(layer)
        row["memory_bytes"] = row["binary_params"] / 8.0 + 4.0 * (
            row["float_params"] + row["scale_params"]
        )
        rows.append(LayerSummary(**row))
    total = lambda key: sum(getattr(r, key) for r in rows)  # noqa: E731
    memory = total("memory_bytes")
    float32_memory = 4.0 * (total("binary_params") + total("float_params"))
    binary_ops, float_macs, scaling = total("binary_ops"), total("float_macs"), total("scaling_ops")
    cost = binary_ops / 64.0 + scaling + float_macs
    return ModelSummary(
        layers=rows,
        binary_params=total("binary_params"),
        float_params=total("float_params"),
        scale_params=total("scale_params"),
        memory_bytes=memory,
        float32_memory_bytes=float32_memory,
        compression_ratio=float32_memory / memory if memory else 1.0,
        binary_ops=binary_ops,
        float_macs=float_macs,
        scaling_ops=scaling,
        speedup=(binary_ops + float_macs) / cost if cost else 1.0,
    )


def _human(n):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return "%.2f%s" % (n / scale, unit)
    return "%g" % n


def _bytes(n):
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return "%.2f %s" % (n / scale, unit)
    return "%.1f B" % n


def _format(s):
    header = (
        "Layer (type)", "Output shape", "In bits", "W bits", "Bin params", "Float params",
        "Memory", "Binary ops", "Float MACs", "Speedup",
    )
    lines = []
    for r in s.layers:
        lines.append(
            (
                "%s (%s)" % (r.name, r.type),
                str(r.output_shape) if r.output_shape is not None else "?",
                "-" if r.input_bits is None else str(r.input_bits),
                "-" if r.weight_bits is None else str(r.weight_bits),
                _human(r.binary_params),
                _human(r.float_params + r.scale_params),
                _bytes(r.memory_bytes),
                _human(r.binary_ops),
                _human(r.float_macs),
                "-" if r.speedup is None else "%.1fx" % r.speedup,
            )
        )
    lines.append(
        (
            "Total", "", "", "", _human(s.binary_params), _human(s.float_params + s.scale_params),
            _bytes(s.memory_bytes), _human(s.binary_ops), _human(s.float_macs),
            "%.1fx" % s.speedup,
        )
    )
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]

    def fmt(row):
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )

    rule = "-" * len(fmt(header))
    out = [fmt(header), rule] + [fmt(r) for r in lines[:-1]] + [rule, fmt(lines[-1])]
    out.append(
        "Memory: %s deployed vs %s float32 (compression %.1fx). Ops per sample; speedup per "
        "§4.1, S = 64cN_W/(cN_W+64)." % (_bytes(s.memory_bytes), _bytes(s.float32_memory_bytes),
                                         s.compression_ratio)
    )
    return "\n".join(out)


def summary(model, print_fn=print):
    """Reports bits, parameters, memory, operations and theoretical speedup of a model.

    Args:
        model: a built Keras model (nested models are expanded into their layers).
        print_fn: called with the table text; ``None`` prints nothing.

    Returns:
        :class:`ModelSummary`: ``.layers`` is a list of :class:`LayerSummary` rows
        (``row.to_dict()`` for a dict); totals are attributes.

    Raises:
        ValueError: the model is not built.
    """
    result = _build(model)
    if print_fn is not None:
        print_fn(result.table())
    return result
