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
* ``memory_bytes``: storage with every 1-bit weight kept as one bit (the paper's 32x),
  ``binary_params / 8 + 4 * (float_params + scale_params)``. A ``.tflite`` from
  :mod:`keras_xnor.tflite_export` stores the XNOR layers' weights that way, but BWN layers
  (float inputs) as float convs with ``alpha * sign(W)`` baked in, and grouped XNOR convs with
  fewer than 16 input channels per group as their float simulation (both run faster as
  TFLite float builtins), so for those layers the file holds 32 bits per weight.
* ``binary_ops``: 1-bit x 1-bit multiply-accumulates (XNOR + popcount), ``c * N_W`` per output
  value of an XNOR layer. ``float_macs``: all other multiply-accumulates of conv / dense layers
  (including BWN layers, whose products are sign flips of real inputs).
  ``scaling_ops``: the non-binary operations of an XNOR layer, one per output value
  (the ``* K alpha`` of eq. 11).
* ``speedup``: theoretical speedup of an XNOR layer over its float twin (§4.1),
  ``S = 64 c N_W / (c N_W + 64)`` with ``c`` input channels and ``N_W = kh * kw``: 64 binary
  operations per CPU instruction and one non-binary operation per output value. ``None`` for
  other layers.

A layer that runs several times per sample (a shared layer, or a layer of a nested model
that is called several times) has ``calls > 1``, and its ops count every run; its
``output_shape`` is that of its first call. Where a layer's spatial size is not fixed (an
input of shape ``(None, None, c)``), its ops cannot be counted: ``ops_known`` is False, its
op counts are 0 (printed ``?``), and the model's ``speedup`` is None.

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
    calls: int = 1
    ops_known: bool = True

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
    speedup: Optional[float]
    ops_known: bool = True

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


def _input_shape(layer):
    try:
        return tuple(layer.input.shape)
    except (AttributeError, ValueError, RuntimeError):
        return None


def _known_prod(dims):
    if dims is None or any(d is None for d in dims):
        return None
    return math.prod(dims)


def _first_shape(tensors):
    tensors = keras.tree.flatten(tensors)
    return tuple(tensors[0].shape) if tensors else None


def _graph_calls(model):
    """``{id(layer): [(input shape, output shape), ...]}``: one entry per call of each layer
    in `model`'s own graph, found by walking back from the model's outputs (so calls of a
    shared layer in other graphs do not count). None when the model has no symbolic graph
    (a Sequential built without an Input, a subclassed model)."""
    try:
        stack = list(keras.tree.flatten(model.outputs))
    except (AttributeError, ValueError, RuntimeError):
        return None
    calls, seen = {}, set()
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None:
            return None
        operation, node_index = history[0], history[1]
        if (id(operation), node_index) in seen:
            continue
        seen.add((id(operation), node_index))
        node = operation._inbound_nodes[node_index]  # noqa: SLF001 (Keras keeps calls here)
        calls.setdefault(id(operation), []).append(
            (node_index, _first_shape(node.input_tensors), _first_shape(node.output_tensors))
        )
        stack.extend(keras.tree.flatten(node.input_tensors))
    return {key: [c[1:] for c in sorted(found)] for key, found in calls.items()}


def _leaf_layers(model, repeat=1):
    """(layer, [(input shape, output shape) per call], runs of its graph per sample) for every
    layer, nested models expanded. A shared layer has one entry per call; the layers of a
    nested model called n times run n times as often as the model around it."""
    graph = _graph_calls(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        calls = (graph or {}).get(id(layer)) or [(_input_shape(layer), _output_shape(layer))]
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer, repeat * len(calls))
        elif isinstance(layer, keras.layers.TimeDistributed):
            yield from _time_distributed(layer, calls, repeat)
        else:
            yield layer, calls, repeat


def _time_distributed(layer, calls, repeat):
    """A TimeDistributed layer as its inner layer, which runs once per time step: its calls
    without the time axis, each counted once per step (unknown, when a call's number of
    steps is not fixed)."""
    inner = layer.layer
    if isinstance(inner, keras.Model):  # its own graph has the per-step shapes
        steps = {None if c[0] is None else c[0][1] for c in calls}
        if len(steps) == 1 and None not in steps:
            yield from _leaf_layers(inner, repeat * len(calls) * steps.pop())
        else:
            for leaf, _, _ in _leaf_layers(inner):
                yield leaf, [(None, None)], repeat
        return
    known = all(c[0] is not None and c[1] is not None and c[0][1] is not None for c in calls)
    if not known:
        yield inner, [(None, None)] * len(calls), repeat
        return
    drop = lambda shape: shape[:1] + shape[2:]  # noqa: E731
    per_step = [(drop(i), drop(o)) for i, o in calls for _ in range(i[1])]
    yield inner, per_step, repeat


_CONV_TYPES = (xnor_layers.QuantConv2D, keras.layers.Conv2D)
_DENSE_TYPES = (xnor_layers.QuantDense, keras.layers.Dense)


def _other_mac_layer(layer):
    """Multiply-accumulates per output position of a float Keras layer that has them (and
    whether they are counted per input position, as for transposed convs), else None."""
    L = keras.layers
    if isinstance(layer, (L.Conv1D, L.Conv3D, L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return math.prod(layer.kernel.shape), False
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return math.prod(layer.depthwise_kernel.shape) + math.prod(
            layer.pointwise_kernel.shape), False
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return math.prod(layer.kernel.shape), True
    return None


def _sum_calls(per_call, calls, repeat):
    """Sum of per_call(input shape, output shape) over the calls, times repeat; None if any
    call's count is unknown (a spatial size that is not fixed)."""
    counts = [per_call(*call) for call in calls]
    if any(c is None for c in counts):
        return None
    return repeat * sum(counts)


def _layer_summary(layer, calls, repeat):
    weights = list(layer.weights)
    row = dict(
        name=layer.name,
        type=type(layer).__name__,
        output_shape=calls[0][1],
        input_bits=None,
        weight_bits=None,
        binary_params=0,
        float_params=_count(weights),
        scale_params=0,
        binary_ops=0,
        float_macs=0,
        scaling_ops=0,
        speedup=None,
        calls=repeat * len(calls),
        ops_known=True,
    )
    if not layer.built:
        return row
    if not isinstance(layer, _CONV_TYPES + _DENSE_TYPES):
        other = _other_mac_layer(layer)
        if other is not None:
            per_position, per_input = other

            channels_first = getattr(layer, "data_format", None) == "channels_first"

            def macs(in_shape, out_shape):
                shape = in_shape if per_input else out_shape
                spatial = None if shape is None else shape[2:] if channels_first else shape[1:-1]
                positions = _known_prod(spatial)
                return None if positions is None else positions * per_position

            total = _sum_calls(macs, calls, repeat)
            row.update(input_bits=FLOAT_BITS, weight_bits=FLOAT_BITS, float_macs=total or 0,
                       ops_known=total is not None)
        return row

    kernel = layer.kernel
    kernel_shape = tuple(kernel.shape)
    fan_in = math.prod(kernel_shape[:-1])  # c_in/groups * kh * kw, or in_features
    input_bits = quantizers.precision(getattr(layer, "input_quantizer", None), FLOAT_BITS)
    weight_bits = quantizers.precision(getattr(layer, "kernel_quantizer", None), FLOAT_BITS)
    row["input_bits"], row["weight_bits"] = input_bits, weight_bits
    if weight_bits == 1:
        row["binary_params"] = _count([kernel])
        row["float_params"] -= row["binary_params"]
        if getattr(layer, "kernel_scale", None) == "mean_abs" or isinstance(
            getattr(layer, "kernel_quantizer", None), quantizers.MeanAbsSign
        ):
            row["scale_params"] = kernel_shape[-1]
    xnor = input_bits == 1 and weight_bits == 1
    if xnor:
        row["speedup"] = xnor_speedup(fan_in, 1)  # depends on the kernel only
    outputs = _sum_calls(
        lambda _, shape: _known_prod(None if shape is None else shape[1:]), calls, repeat
    )
    if outputs is None:
        row["ops_known"] = False
    elif xnor:
        row.update(binary_ops=outputs * fan_in, scaling_ops=outputs)
    else:
        row["float_macs"] = outputs * fan_in
    return row


def _build(model):
    if not model.built:
        raise ValueError(
            "keras_xnor.summary: the model is not built. Build it first (give it an "
            "keras.Input, or call model.build(input_shape) / call it on data)."
        )
    rows = []
    for layer, calls, repeat in _leaf_layers(model):
        row = _layer_summary(layer, calls, repeat)
        row["memory_bytes"] = row["binary_params"] / 8.0 + 4.0 * (
            row["float_params"] + row["scale_params"]
        )
        rows.append(LayerSummary(**row))
    total = lambda key: sum(getattr(r, key) for r in rows)  # noqa: E731
    memory = total("memory_bytes")
    float32_memory = 4.0 * (total("binary_params") + total("float_params"))
    binary_ops, float_macs, scaling = total("binary_ops"), total("float_macs"), total("scaling_ops")
    cost = binary_ops / 64.0 + scaling + float_macs
    ops_known = all(r.ops_known for r in rows)
    if not ops_known:
        speedup = None
    else:
        speedup = (binary_ops + float_macs) / cost if cost else 1.0
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
        speedup=speedup,
        ops_known=ops_known,
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
                "%s (%s)%s" % (r.name, r.type, " x%d" % r.calls if r.calls != 1 else ""),
                str(r.output_shape) if r.output_shape is not None else "?",
                "-" if r.input_bits is None else str(r.input_bits),
                "-" if r.weight_bits is None else str(r.weight_bits),
                _human(r.binary_params),
                _human(r.float_params + r.scale_params),
                _bytes(r.memory_bytes),
                _human(r.binary_ops) if r.ops_known else "?",
                _human(r.float_macs) if r.ops_known else "?",
                "-" if r.speedup is None else "%.1fx" % r.speedup,
            )
        )
    def total_ops(n):  # the known part, and "+?" for the unknown one
        return _human(n) if s.ops_known else ("%s+?" % _human(n) if n else "?")

    lines.append(
        (
            "Total", "", "", "", _human(s.binary_params), _human(s.float_params + s.scale_params),
            _bytes(s.memory_bytes), total_ops(s.binary_ops), total_ops(s.float_macs),
            "?" if s.speedup is None else "%.1fx" % s.speedup,
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
        "Memory: %s with 1-bit weights as bits vs %s float32 (compression %.1fx). Ops per "
        "sample; speedup per §4.1, S = 64cN_W/(cN_W+64)." % (
            _bytes(s.memory_bytes), _bytes(s.float32_memory_bytes), s.compression_ratio)
    )
    if any(r.calls != 1 for r in s.layers):
        out.append("xN: the layer runs N times per sample (shared layer or nested model); "
                   "its ops count every run.")
    if not s.ops_known:
        out.append("?: ops unknown, the layer's spatial size is not fixed (build the model on "
                   "an input with fixed height and width to count them).")
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
