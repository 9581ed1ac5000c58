"""Export keras-xnor models to TFLite, and run them on stock LiteRT with the keras-xnor delegate.

* :func:`convert` turns a Keras model into a ``.tflite`` whose binary layers are the custom ops
  ``KerasXnorBinConv2D`` / ``KerasXnorBinDense`` with bitpacked int32 constant weights (1 bit
  per weight), BatchNorm folded into them where exact; float layers stay builtins.
* :class:`Interpreter` is LiteRT's ``Interpreter`` with the delegate
  (``custom_ops/tflite``) loaded; :func:`delegate_path` / :func:`load_delegate` give the
  library to load into LiteRT or ``tf.lite`` yourself.
* CLI: ``python -m keras_xnor.tflite_export MODEL.keras OUT.tflite``.
"""

from keras_xnor.tflite_export._export import convert, export_model, pack_signs
from keras_xnor.tflite_export._interpreter import (
    HOW_TO_LOAD,
    Interpreter,
    delegate_path,
    load_delegate,
)

__all__ = [
    "convert",
    "export_model",
    "pack_signs",
    "Interpreter",
    "delegate_path",
    "load_delegate",
    "HOW_TO_LOAD",
]

from keras_xnor.tflite_export._inspect import builtin_op_names, custom_ops  # noqa: E402

__all__ += ["custom_ops", "builtin_op_names"]
