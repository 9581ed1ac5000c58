"""keras-xnor: binary weight networks and XNOR-Networks for Keras 3 (TensorFlow backend).

Rastegari, Ordonez, Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary
Convolutional Neural Networks", ECCV 2016.

Layers: :class:`BinConv2D`, :class:`BinDense` (XNOR, eq. 11), :class:`BWNConv2D`,
:class:`BWNDense` (binary weights, eq. 4), :class:`QuantConv2D`, :class:`QuantDense` (any
quantizers), :class:`BinaryActivation` (BinActiv of Fig. 3). Quantizers and scales:
:mod:`keras_xnor.quantizers`. Model report: :func:`summary`. Compiled ops: :mod:`keras_xnor.ops`.
Model zoo: :mod:`keras_xnor.models` (imported on first use).
"""

import importlib

from keras_xnor import constraints, quantizers, spec
from keras_xnor.layers import (
    BinaryActivation,
    BinConv2D,
    BinDense,
    BWNConv2D,
    BWNDense,
    QuantConv2D,
    QuantDense,
)
from keras_xnor.summary import summary

__version__ = "0.1.0"

__all__ = [
    "BinConv2D",
    "BinDense",
    "BWNConv2D",
    "BWNDense",
    "QuantConv2D",
    "QuantDense",
    "BinaryActivation",
    "summary",
    "quantizers",
    "constraints",
    "spec",
    "ops",
    "models",
    "__version__",
]

# Loaded on first access: `ops` may load a native library, `models` builds on the layers.
_LAZY_SUBMODULES = ("ops", "models")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        module = importlib.import_module("keras_xnor." + name)
        globals()[name] = module
        return module
    raise AttributeError("module 'keras_xnor' has no attribute %r" % name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
