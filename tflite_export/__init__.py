"""Export keras-xnor models to TFLite, and run them on stock LiteRT with the keras-xnor delegate.

* :func:`convert` turns a Keras model into a ``.tflite`` whose binary layers are the custom ops
  ``KerasXnorBinConv2D`` / ``KerasXnorBinDense`` with bitpacked int32 constant weights (1 bit
  per weight), BatchNorm folded into them where exact; float layers stay builtins.
* :class:`Interpreter` is LiteRT's ``Interpreter`` with the delegate
  (``custom_ops/tflite``) loaded; :func:`delegate_path` / :func:`load_delegate` give the
  library to load into LiteRT or ``tf.lite`` yourself.
* CLI: ``python -m keras_xnor.tflite_export MODEL.keras OUT.tflite``.

Example::

    from keras_xnor import tflite_export

    data = tflite_export.convert(model)            # dynamic batch; batch_size=1 to fix it
    open("model.tflite", "wb").write(data)
    interpreter = tflite_export.Interpreter(model_path="model.tflite", num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    logits = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

On stock LiteRT without this package, load the delegate library yourself::

    from ai_edge_litert.interpreter import Interpreter, load_delegate
    Interpreter(model_path="model.tflite",
                experimental_delegates=[load_delegate(path_to_delegate_so, {"num_threads": 2})])

Delegate options: ``num_threads`` (1..256), ``kernel`` (auto/reference/portable/avx2),
``profile`` (0/1: per-node timings on stderr).
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
