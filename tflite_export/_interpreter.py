"""LiteRT's Interpreter with the keras-xnor delegate loaded, and clear errors."""

import glob
import numbers
import os

from ai_edge_litert import interpreter as _litert

from keras_xnor import ops, spec

_OUR_OPS = (spec.BIN_CONV2D_OP, spec.BIN_DENSE_OP, spec.PACK_BITS_OP)

HOW_TO_LOAD = (
    "Run it with keras_xnor.tflite_export.Interpreter(model_path=...), which loads the "
    "keras-xnor delegate, or load the delegate into LiteRT yourself: "
    "ai_edge_litert.interpreter.Interpreter(model_path=..., experimental_delegates="
    "[ai_edge_litert.interpreter.load_delegate(keras_xnor.tflite_export.delegate_path())])"
)


def delegate_path():
    """Path of the keras-xnor TFLite delegate shared library (_keras_xnor_delegate*.so).

    Looked for in ``keras_xnor.ops.library_dir()``: ``$KERAS_XNOR_LIBRARY_DIR`` when set,
    else the package's ``_ops`` directory.

    Raises:
        RuntimeError: the library is not built (says how to build it).
    """
    directory = ops.library_dir()
    paths = sorted(glob.glob(os.path.join(directory, "_keras_xnor_delegate*.so")))
    if not paths:
        raise RuntimeError(
            "The keras-xnor TFLite delegate (_keras_xnor_delegate*.so) is not built: none in "
            "%s%s. Build it with `make ops` (or `pip install --no-build-isolation -e .`)."
            % (directory, ops._named_by_env(directory))
        )
    return paths[0]


def load_delegate(num_threads=None, kernel=None, profile=False):
    """Loads the keras-xnor delegate (a LiteRT ``Delegate``) with validated options.

    Args:
        num_threads: threads of the delegate's pool (1..256), or None for the interpreter's
            num_threads (1 when that is unset).
        kernel: "auto" (default), "reference", "portable" or "avx2".
        profile: time every binary node; a per-node summary goes to stderr when the
            interpreter is deleted.

    Raises:
        ValueError: an option is invalid (the delegate's message says which and why).
    """
    options = {}
    if num_threads is not None:
        options["num_threads"] = num_threads
    if kernel is not None:
        options["kernel"] = kernel
    if profile:
        options["profile"] = 1
    return _litert.load_delegate(delegate_path(), options)


def _explain(error):
    """Re-raises LiteRT errors about our unresolved ops with what to do (None: not ours)."""
    text = str(error)
    if "unresolved custom op" in text.lower() and any(op in text for op in _OUR_OPS):
        return RuntimeError(
            "This model uses keras-xnor custom ops (%s) that need the keras-xnor TFLite "
            "delegate, which is not loaded. %s\nLiteRT said: %s"
            % (", ".join(op for op in _OUR_OPS if op in text), HOW_TO_LOAD, text.strip())
        )
    return None


def _as_bytes(model_content):
    """``model_content`` as bytes: LiteRT takes only bytes, and says so in terms of its C++
    binding. A bytearray (what a flatbuffers Builder returns), memoryview or uint8 array of
    the flatbuffer is copied to bytes; anything else is a TypeError that says what to give."""
    if isinstance(model_content, bytes):
        return model_content
    if isinstance(model_content, (bytearray, memoryview)) or (
        hasattr(model_content, "dtype") and getattr(model_content.dtype, "itemsize", 0) == 1
    ):
        return bytes(memoryview(model_content).cast("B"))
    hint = " (a file path? give it as model_path)" if isinstance(model_content, str) else ""
    raise TypeError(
        "Interpreter: model_content must be the .tflite flatbuffer as bytes (or a bytearray, "
        "memoryview or uint8 array of it), got %s%s" % (type(model_content).__name__, hint)
    )


class Interpreter(_litert.Interpreter):
    """``ai_edge_litert.interpreter.Interpreter`` with the keras-xnor delegate loaded.

    Same methods as LiteRT's Interpreter. The delegate runs the KerasXnorBinConv2D /
    KerasXnorBinDense nodes; XNNPACK (LiteRT's default) runs the float builtins.

    Args:
        model_path: path of a .tflite file (or give model_content).
        model_content: the .tflite flatbuffer as bytes (a bytearray, memoryview or uint8
            numpy array of it is copied to bytes).
        num_threads: threads for both the builtins (XNNPACK) and the delegate.
        experimental_delegates: further LiteRT delegates, applied after ours.
        delegate_kernel: the delegate's "kernel" option ("auto", "reference", ...).
        delegate_profile: time the binary nodes (summary on stderr when deleted).
        use_delegate: False loads the model without the delegate (a model with keras-xnor ops
            then fails with an error explaining how to load it).
        **kwargs: other ``ai_edge_litert.interpreter.Interpreter`` arguments.

    Raises:
        TypeError: model_content is not bytes-like.
        ValueError: unreadable/corrupt model file, or invalid options.
        RuntimeError: the model needs the delegate and use_delegate is False, or the delegate
            library is not built.
    """

    def __init__(
        self,
        model_path=None,
        model_content=None,
        num_threads=None,
        experimental_delegates=None,
        delegate_kernel=None,
        delegate_profile=False,
        use_delegate=True,
        **kwargs,
    ):
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or (
                num_threads < 1
            ):
                raise ValueError(
                    "num_threads must be an int >= 1 or None, got %r" % (num_threads,)
                )
            num_threads = int(num_threads)  # LiteRT's binding takes Python ints only
        if (model_path is None) == (model_content is None):
            raise ValueError("Interpreter: give exactly one of model_path and model_content")
        if model_path is not None and os.path.isdir(model_path):
            raise ValueError("Interpreter: model_path %r is a directory, not a .tflite file"
                             % (model_path,))
        if model_path is not None and not os.path.isfile(model_path):
            raise ValueError("Interpreter: model file %r does not exist" % (model_path,))
        if model_content is not None:
            model_content = _as_bytes(model_content)
            if not model_content:
                raise ValueError("Interpreter: model_content is empty (0 bytes), not a .tflite")
            self._keras_xnor_model_content = model_content  # the interpreter reads it later
        delegates = list(experimental_delegates or [])
        if use_delegate:
            self._keras_xnor_delegate = load_delegate(
                num_threads=num_threads, kernel=delegate_kernel, profile=delegate_profile
            )
            delegates.insert(0, self._keras_xnor_delegate)
        try:
            super().__init__(
                model_path=model_path,
                model_content=model_content,
                experimental_delegates=delegates or None,
                num_threads=num_threads,
                **kwargs,
            )
        except (ValueError, RuntimeError) as error:
            explained = _explain(error)
            if explained is not None:
                raise explained from error
            raise ValueError(
                "Could not load the .tflite model (%s): %s. Is it a complete, uncorrupted "
                ".tflite file (e.g. written by keras_xnor.tflite_export.convert)?"
                % (model_path or "%d bytes of model_content" % len(model_content or b""),
                   str(error).strip())
            ) from error

    def allocate_tensors(self):
        try:
            return super().allocate_tensors()
        except (ValueError, RuntimeError) as error:
            explained = _explain(error)
            if explained is not None:
                raise explained from error
            raise

    def invoke(self):
        try:
            return super().invoke()
        except (ValueError, RuntimeError) as error:
            explained = _explain(error)
            if explained is not None:
                raise explained from error
            raise
