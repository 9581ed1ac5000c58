"""TensorFlow front end of the compiled XNOR kernels, and their pure-TF twins.

The compiled library ``keras_xnor/_ops/_keras_xnor_ops*.so`` (built from ``custom_ops/core``
and ``custom_ops/tf`` by ``make ops``; ``$KERAS_XNOR_LIBRARY_DIR`` may name another directory
to load it from, e.g. a Bazel build's ``bazel-bin``) registers four ops (names in
:mod:`keras_xnor.spec`):

* ``KerasXnorPackBits``: float ``[..., C]`` -> int32 ``[..., ceil(C / 32)]`` sign bits
  (bit set = negative, channel ``c`` in bit ``c % 32`` of word ``c // 32``, sign(0) = +1).
* ``KerasXnorPackFilter``: a Keras kernel ``[..., C, O]`` -> ``[O, ..., ceil(C / 32)]`` with
  the same bits, cached per weight buffer so unchanged weights are packed once.
* ``KerasXnorBinConv2D``: the XNOR-Net convolution of eq. 11 (Rastegari et al., 2016),

      I (*) W  ~=  (sign(I) (*) sign(W)) . K alpha  (+ bias, then ReLU if asked),

  ``dot = sign(I) (*) sign(W)`` computed as ``n - 2 popcount(packed(I) XOR packed(W))``,
  ``alpha`` one scale per output filter (eq. 6 when it is ``mean |W|``), and
  ``K = A (*) k`` with ``A = mean_c |I|`` and ``k`` the ``kh x kw`` box filter ``1 / (kh kw)``
  (the paper's Fig. 2). With SAME padding a padded tap contributes 0 to the dot and to K
  (the divisor stays ``kh kw``).
* ``KerasXnorBinDense``: the same for a fully connected layer (``K = mean_c |x|`` per sample).

What this module offers:

* Loading: :func:`load_ops` (lazy, cached, with a clear error when the library is missing or
  was built against another TensorFlow) and :func:`compiled_ops_available`.
* Layer entry points :func:`bin_conv2d` / :func:`bin_dense`: forward = the compiled op,
  backward = the gradients of the layer's float simulation (so training with the op is
  exactly as training with the simulation).
* Pure-TF twins of the ops, the oracle and the fallback where the library cannot run:
  :func:`pack_bits_reference` and :func:`pack_filter_reference` (bit-identical),
  :func:`unpack_bits_reference`,
  :func:`bin_conv2d_reference` and :func:`bin_dense_reference` (same integer dot, same float
  formula). They also define the gradients registered for the raw ops.

Threads: the kernels run on TensorFlow's intra-op thread pool
(``tf.config.threading.set_intra_op_parallelism_threads``, fixed when TF starts); results are
identical for any thread count. XLA: the ops have no XLA kernel, so layers that run them opt
their model out of ``jit_compile`` (Keras' ``jit_compile="auto"`` is off on CPU anyway), and
inside a ``tf.function(jit_compile=True)`` the layers' ``"auto"`` path traces the simulation.
"""

import ctypes
import functools
import glob
import numbers
import os
import threading

import tensorflow as tf

from keras_xnor import quantizers, spec

__all__ = [
    "CompiledOpsError",
    "load_ops",
    "compiled_ops_available",
    "library_dir",
    "library_path",
    "built_tf_version",
    "pack_bits",
    "pack_bits_reference",
    "unpack_bits_reference",
    "bin_conv2d",
    "bin_dense",
    "binary_conv2d_dot",
    "binary_dense_dot",
    "bin_conv2d_reference",
    "bin_dense_reference",
]

OPS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ops")
LIBRARY_DIR_ENV = "KERAS_XNOR_LIBRARY_DIR"
LIBRARY_PATTERN = "_keras_xnor_ops*.so"
BUILD_HINT = (
    "Build it from the keras-xnor source tree with `make ops`, or reinstall with "
    "`pip install --no-build-isolation -e .` (TensorFlow must be importable while building)."
)
_VERSION_MARKER = b"keras_xnor_built_tf_version="


class CompiledOpsError(ImportError):
    """The compiled TF op library is missing, broken, or built for another TensorFlow."""


_lock = threading.Lock()
_state = {}  # "module" -> loaded op module, or "error" -> CompiledOpsError


def library_dir():
    """Directory the compiled libraries (TF ops, TFLite delegate) are loaded from.

    ``$KERAS_XNOR_LIBRARY_DIR`` when it is set and not empty (for example the ``bazel-bin`` of
    a Bazel build of ``//:_keras_xnor_ops.so`` and ``//:_keras_xnor_delegate.so``), else the
    package's ``_ops`` directory, where ``make ops`` / ``pip install`` put them.
    """
    return os.environ.get(LIBRARY_DIR_ENV) or OPS_DIR


def _named_by_env(directory):
    """" (named by $KERAS_XNOR_LIBRARY_DIR)" when that variable chose ``directory``."""
    if os.environ.get(LIBRARY_DIR_ENV) and directory == library_dir():
        return " (named by $%s)" % LIBRARY_DIR_ENV
    return ""


def library_path(directory=None):
    """Path of the TF op library in ``directory`` (default: :func:`library_dir`), or None."""
    matches = sorted(glob.glob(os.path.join(directory or library_dir(), LIBRARY_PATTERN)))
    return matches[0] if matches else None


def built_tf_version(path):
    """TensorFlow version the op library at ``path`` was compiled against, or None.

    Read from the marker string that ``custom_ops/tf/version.cc`` compiles in next to
    ``keras_xnor_built_tf_version()``, without opening the library: dlopen would run the
    library's op registrations outside ``tf.load_op_library``, and a library built for
    another TF may not even open (undefined symbols).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    start = data.find(_VERSION_MARKER)
    if start < 0:
        return None
    start += len(_VERSION_MARKER)
    end = data.find(b"\0", start)
    return data[start:end].decode(errors="replace") if end > start else None


def _loaded_tf_version(path):
    """Asks a library that is already loaded (ctypes then only takes a reference)."""
    try:
        function = ctypes.CDLL(path).keras_xnor_built_tf_version
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_char_p
    return function().decode()


def _version_error(path, version):
    return CompiledOpsError(
        "keras-xnor's compiled TensorFlow ops at %s were built against TensorFlow %s, but "
        "TensorFlow %s is running; a custom op library only works with the TensorFlow it "
        "was compiled for. Rebuild it: %s"
        % (path, version or "<unknown version>", tf.__version__, BUILD_HINT)
    )


def _load(directory):
    path = library_path(directory)
    if path is None:
        raise CompiledOpsError(
            "keras-xnor's compiled TensorFlow ops are not built: no %s in %s%s. %s"
            % (LIBRARY_PATTERN, directory, _named_by_env(directory), BUILD_HINT)
        )
    version = built_tf_version(path)
    if version != tf.__version__:
        raise _version_error(path, version)
    try:
        module = tf.load_op_library(path)
    except (tf.errors.OpError, OSError) as error:
        raise CompiledOpsError(
            "keras-xnor's compiled TensorFlow ops at %s could not be loaded (%s). %s"
            % (path, error, BUILD_HINT)
        ) from error
    loaded_version = _loaded_tf_version(path)
    if loaded_version != tf.__version__:
        raise _version_error(path, loaded_version)
    if not hasattr(module, "keras_xnor_bin_conv2d"):
        raise CompiledOpsError(
            "keras-xnor's compiled TensorFlow ops at %s registered no ops (was the library "
            "opened outside tf.load_op_library?). %s" % (path, BUILD_HINT)
        )
    return module


def load_ops(directory=None):
    """Loads the compiled op library once and returns its module of op wrappers.

    Args:
        directory: where to look for ``_keras_xnor_ops*.so``; default :func:`library_dir`.
            Only the first call's outcome is cached (use ``_reset_for_tests`` to retry).

    Returns:
        The module from ``tf.load_op_library`` (``keras_xnor_pack_bits``,
        ``keras_xnor_bin_conv2d``, ``keras_xnor_bin_dense``).

    Raises:
        CompiledOpsError: the library is missing, cannot be loaded, or was built against a
            TensorFlow other than the running one. The message says how to rebuild it.
    """
    with _lock:
        if "module" in _state:
            return _state["module"]
        if "error" in _state:
            raise _state["error"]
        try:
            module = _load(directory or library_dir())
        except CompiledOpsError as error:
            _state["error"] = error
            raise
        _state["module"] = module
        return module


def compiled_ops_available():
    """True when the compiled op library loads (tried once, then cached)."""
    try:
        load_ops()
    except CompiledOpsError:
        return False
    return True


def _reset_for_tests():
    """Forgets the cached load outcome (tests of the loader only)."""
    with _lock:
        _state.clear()


# ----------------------------------------------------------------------------------------------
# Bit packing.


def pack_bits(x):
    """Packs the signs of ``x`` along its last axis with the compiled op.

    Args:
        x: float tensor ``[..., C]`` (cast to float32; the sign does not change).

    Returns:
        int32 tensor ``[..., ceil(C / 32)]``; bit ``c % 32`` of word ``c // 32`` is set iff
        ``x[..., c] < 0`` (sign(0) = +1, NaN -> +1); padding bits are 0.
    """
    return load_ops().keras_xnor_pack_bits(_as_float32(x))


def pack_bits_reference(x):
    """Pure-TF twin of :func:`pack_bits`, bit-identical, no compiled library needed.

    Args:
        x: float tensor ``[..., C]`` of known rank.

    Returns:
        int32 tensor ``[..., ceil(C / 32)]``.
    """
    x = _as_float32(x)
    bits_per_word = spec.BITS_PER_WORD
    channels = tf.shape(x)[-1]
    words = (channels + bits_per_word - 1) // bits_per_word
    bits = tf.cast(x < 0, tf.int64)  # NEGATIVE_BIT = 1; 0, -0.0 and NaN give 0
    rank = x.shape.rank
    paddings = tf.concat(
        [tf.zeros([rank - 1, 2], tf.int32), [[0, words * bits_per_word - channels]]], axis=0
    )
    bits = tf.pad(bits, paddings)
    bits = tf.reshape(bits, tf.concat([tf.shape(x)[:-1], [words, bits_per_word]], axis=0))
    place_values = tf.bitwise.left_shift(
        tf.constant(1, tf.int64), tf.range(bits_per_word, dtype=tf.int64)
    )  # LSB first
    unsigned = tf.reduce_sum(bits * place_values, axis=-1)  # distinct powers: no carries
    signed = tf.where(unsigned >= 2**31, unsigned - 2**32, unsigned)
    packed = tf.cast(signed, tf.int32)
    if x.shape[-1] is not None:
        packed = tf.ensure_shape(packed, x.shape[:-1] + [spec.packed_words(x.shape[-1])])
    return packed


def pack_filter(kernel, cache=True):
    """Packs a Keras kernel for the compiled conv / dense ops (``KerasXnorPackFilter``).

    The input-channel axis (second to last) is packed and the output axis (last) moves to the
    front: HWIO ``[KH, KW, C, O]`` -> OHWI ``[O, KH, KW, ceil(C / 32)]``, ``[C, units]`` ->
    ``[units, ceil(C / 32)]``. Equal to ``pack_bits(transpose(kernel, [r-1, 0, ..., r-2]))``
    bit for bit. The same pass gives ``mean |W|`` per output filter, eq. 6's alpha.

    With ``cache`` the op remembers its results per weight buffer: called again on the same
    unchanged weights (a variable that was not assigned since, a constant) it returns the
    tensors it made before instead of reading the weights again, so inference packs each
    layer's weights once. Set ``KERAS_XNOR_TF_WEIGHT_CACHE=0`` before the first call to turn
    this off everywhere (needed only with TF1 reference variables or raw in-place ops such as
    ``InplaceUpdate``).

    Args:
        kernel: float tensor of rank >= 2, ``[..., C, O]``.
        cache: False for weights that are new at every call (a training step's binarized
            kernel): remembering them would only hold memory.

    Returns:
        ``(packed, mean_abs)``: int32 ``[O, ..., ceil(C / 32)]`` and float32 ``[O]`` (summed in
        double, so it may differ from ``quantizers.mean_abs`` in the last bit).
    """
    packed, mean_abs = load_ops().keras_xnor_pack_filter(_as_float32(kernel), cache=bool(cache))
    return packed, mean_abs


def pack_filter_reference(kernel):
    """Pure-TF twin of :func:`pack_filter` (packing bit-identical), no compiled library needed."""
    kernel = _as_float32(kernel)
    rank = kernel.shape.rank
    if rank is None or rank < 2:
        raise ValueError("pack_filter_reference: kernel must have rank >= 2, got shape %s"
                         % kernel.shape)
    packed = pack_bits_reference(tf.transpose(kernel, [rank - 1] + list(range(rank - 1))))
    return packed, tf.reduce_mean(tf.abs(kernel), axis=list(range(rank - 1)))


def unpack_bits_reference(packed, channels):
    """Inverse of packing: int32 ``[..., ceil(C / 32)]`` -> float32 ``[..., C]`` of -1 / +1.

    Args:
        packed: int32 tensor of packed sign bits.
        channels: the number of real channels ``C`` (padding bits are dropped).
    """
    packed = tf.convert_to_tensor(packed, tf.int32)
    words = packed.shape[-1] if packed.shape.rank else None
    if words is not None and not 1 <= channels <= words * spec.BITS_PER_WORD:
        raise ValueError(
            "unpack_bits_reference: %d packed words per row hold 1 to %d channels, got "
            "channels=%r" % (words, words * spec.BITS_PER_WORD, channels)
        )
    shifts = tf.range(spec.BITS_PER_WORD, dtype=tf.int32)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(packed[..., None], shifts), 1)
    bits = tf.reshape(bits, tf.concat([tf.shape(packed)[:-1], [-1]], axis=0))[..., :channels]
    return 1.0 - 2.0 * tf.cast(bits, tf.float32)


# ----------------------------------------------------------------------------------------------
# Pure-TF twins of the convolution and the dense layer.


@tf.custom_gradient
def _ste_sign(x):
    """sign(x) in {-1, +1} (sign(0) = +1) with the straight-through gradient 1_{|x| <= 1}."""

    def grad(dy):
        return dy * tf.cast(tf.abs(x) <= 1.0, dy.dtype)

    return tf.where(x < 0, -tf.ones_like(x), tf.ones_like(x)), grad


def _dim(x, axis):
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def _zero_padded_conv(x, w, strides, padding, dilations):
    """``tf.nn.conv2d`` with TF's padding rule made explicit (zeros) and any stride/dilation."""
    k_h, k_w = w.shape[0], w.shape[1]
    top, bottom = quantizers.explicit_pads(_dim(x, 1), k_h, strides[0], dilations[0], padding)
    left, right = quantizers.explicit_pads(_dim(x, 2), k_w, strides[1], dilations[1], padding)
    x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    # tf.nn.convolution (not conv2d): its dilated path has a CPU gradient (stride > 1 with
    # dilation > 1 runs at stride 1 and is subsampled there).
    return quantizers.convolution(x, w, strides, "VALID", dilations)


def _finish(dot, alpha, k_map, bias, relu):
    out = dot * alpha
    if k_map is not None:
        out = out * k_map
    out = out + bias
    return tf.nn.relu(out) if relu else out


def bin_conv2d_reference(
    inputs, filter, alpha, bias, *, strides, padding, dilations, in_channels, use_k, relu
):
    """Pure-TF twin of the ``KerasXnorBinConv2D`` op (same arguments and attributes).

    Computes eq. 11: ``out = dot * alpha * K + bias`` (then ReLU if ``relu``) with
    ``dot = sign(I) (*) B`` (``B`` = the unpacked ±1 filter; padded taps are zeros so they add
    0), ``K = A (*) k``, ``A = mean_c |I|``, ``k = 1 / (kh kw)`` box, zero padded. The dot is
    exact (integers in float32); the float stage may differ from the op by rounding.
    Differentiable: straight-through gradient for the sign of ``inputs``, exact for K,
    ``alpha`` and ``bias`` (this defines the op's registered gradient).

    Args:
        inputs: float32 NHWC.
        filter: int32 ``[O, KH, KW, ceil(C / 32)]``, packed OHWI.
        alpha, bias: float32 ``[O]``.
        strides, dilations: 2 ints. padding: "SAME" or "VALID". in_channels: C.
        use_k, relu: bool.
    """
    x = _as_float32(inputs)
    padding = _padding(padding)
    weights = unpack_bits_reference(filter, in_channels)  # [O, KH, KW, C]
    weights = tf.transpose(weights, [1, 2, 3, 0])  # HWIO
    dot = _zero_padded_conv(_ste_sign(x), weights, strides, padding, dilations)
    k_map = None
    if use_k:
        k_h, k_w = weights.shape[0], weights.shape[1]
        box = tf.fill([k_h, k_w, 1, 1], 1.0 / (k_h * k_w))
        mean_abs = tf.reduce_mean(tf.abs(x), axis=-1, keepdims=True)
        k_map = _zero_padded_conv(mean_abs, box, strides, padding, dilations)
    return _finish(dot, _as_float32(alpha), k_map, _as_float32(bias), relu)


def bin_dense_reference(inputs, filter, alpha, bias, *, in_channels, use_k, relu):
    """Pure-TF twin of the ``KerasXnorBinDense`` op: ``dot * alpha * K + bias`` (ReLU).

    ``dot = sign(x) B^T`` with ``B`` the unpacked ±1 filter ``[units, C]``;
    ``K = mean_c |x|`` per sample. Gradients as in :func:`bin_conv2d_reference`.
    """
    x = _as_float32(inputs)
    weights = unpack_bits_reference(filter, in_channels)  # [units, C]
    dot = tf.matmul(_ste_sign(x), weights, transpose_b=True)
    k = tf.reduce_mean(tf.abs(x), axis=-1, keepdims=True) if use_k else None
    return _finish(dot, _as_float32(alpha), k, _as_float32(bias), relu)


# ----------------------------------------------------------------------------------------------
# Layer entry points: forward with the compiled op, backward through the float simulation.


def bin_conv2d(
    inputs, kernel, alpha, bias, *, strides, padding, dilation_rate, use_k, relu, simulation,
    groups=1,
):
    """XNOR convolution (eq. 11) with the compiled op, differentiated like ``simulation``.

    Forward: the latent kernel is binarized and packed (HWIO -> OHWI, ``KerasXnorPackFilter``,
    which packs unchanged weights only once),
    then ``KerasXnorBinConv2D`` computes ``dot * alpha * K + bias`` (ReLU if ``relu``), with
    ``inputs`` binarized inside the op and K computed from the same real-valued ``inputs``.
    Backward: the gradients of ``simulation(inputs, kernel, alpha, bias)`` (recomputed under a
    tape), so they equal the float simulation's exactly, including its sign estimator, weight
    clipping rule and whether K is differentiated.

    Args:
        inputs: float NHWC ``[N, H, W, C]`` (computed in float32, returned in its dtype).
        kernel: float HWIO ``[KH, KW, C, O]`` latent kernel; sign(0) = +1.
        alpha: float ``[O]`` per-filter scale (ones when scaling is off), or None for eq. 6's
            ``mean |kernel|``, which then comes from the op that packs the kernel (read once
            while the kernel is unchanged) and is differentiated as ``quantizers.mean_abs``.
        bias: float ``[O]`` or None.
        strides, dilation_rate: 2 ints (or one int for both).
        padding: "same" or "valid", any case.
        use_k, relu: bool.
        simulation: callable ``(inputs, kernel, alpha, bias) -> NHWC`` computing the same
            function in pure TF (``bias`` may be None).
        groups: channel groups, as in ``keras.layers.Conv2D`` (``kernel`` is then
            ``[KH, KW, C / groups, O]``): one op per group on its slice of the input channels
            and of the filters, concatenated. Needs ``use_k`` False (K averages over all
            input channels).

    Returns:
        The op's output ``[N, OH, OW, O]``.
    """
    ops = load_ops()
    kernel = tf.convert_to_tensor(kernel)
    if kernel.shape.rank != 4 or kernel.shape[2] is None:
        raise ValueError(
            "bin_conv2d: kernel must be HWIO with a known input-channel axis, got shape %s"
            % kernel.shape
        )
    if groups != 1 and use_k:
        raise ValueError("bin_conv2d: groups=%d needs use_k=False (K averages |I| over all "
                         "input channels)" % groups)
    attrs = _conv_attrs(strides, padding, dilation_rate, int(kernel.shape[2]), use_k, relu)

    def forward(x, k, a, b):
        packed, mean_abs = ops.keras_xnor_pack_filter(k)  # OHWI; once while k is unchanged
        a = mean_abs if a is None else a
        conv = functools.partial(ops.keras_xnor_bin_conv2d, **attrs)
        return _per_group(conv, groups, x, packed, a, b)

    return _with_simulated_gradient(forward, simulation, inputs, kernel, alpha, bias)


def _conv_attrs(strides, padding, dilation_rate, in_channels, use_k, relu):
    return {
        spec.ATTR_STRIDES: list(_pair(strides, "strides")),
        spec.ATTR_PADDING: _padding(padding),
        spec.ATTR_DILATIONS: list(_pair(dilation_rate, "dilation_rate")),
        spec.ATTR_IN_CHANNELS: in_channels,
        spec.ATTR_USE_K: bool(use_k),
        spec.ATTR_RELU: bool(relu),
    }


def _per_group(conv, groups, x, packed, *per_filter):
    """``conv(x, packed, *per_filter)`` of a grouped convolution: the input channels of ``x``
    and the filters (rows of the packed OHWI filter, entries of each per-filter vector) split
    into ``groups`` equal parts, one ``conv`` per part, outputs concatenated on channels.
    The filter is packed once while unchanged, but each group's part is a new tensor at every
    call (TF's split copies here), so the conv op re-lays it out for its kernels per call
    (O(filter size)) instead of keeping one prepared copy as it does for ``groups=1``."""
    if groups == 1:
        return conv(x, packed, *per_filter)
    parts = zip(
        tf.split(x, groups, axis=-1),
        tf.split(packed, groups, axis=0),
        *(tf.split(v, groups, axis=0) for v in per_filter),
    )
    return tf.concat([conv(*part) for part in parts], axis=-1)


def bin_dense(inputs, kernel, alpha, bias, *, use_k, relu, simulation):
    """XNOR fully connected layer with the compiled op, differentiated like ``simulation``.

    ``out = dot * alpha * K + bias`` (ReLU if ``relu``), ``dot = sign(x) sign(W)``,
    ``K = mean_c |x|`` per sample (1 when not ``use_k``). Gradients as in :func:`bin_conv2d`.

    Args:
        inputs: float ``[N, C]``.
        kernel: float ``[C, units]`` latent kernel.
        alpha: float ``[units]``, or None for ``mean |kernel|`` (as in :func:`bin_conv2d`);
            bias: float ``[units]`` or None.
        use_k, relu: bool.
        simulation: callable ``(inputs, kernel, alpha, bias) -> [N, units]`` in pure TF.
    """
    ops = load_ops()
    kernel = tf.convert_to_tensor(kernel)
    if kernel.shape.rank != 2 or kernel.shape[0] is None:
        raise ValueError(
            "bin_dense: kernel must be [in_features, units] with known in_features, got "
            "shape %s" % kernel.shape
        )
    attrs = {
        spec.ATTR_IN_CHANNELS: int(kernel.shape[0]),
        spec.ATTR_USE_K: bool(use_k),
        spec.ATTR_RELU: bool(relu),
    }

    def forward(x, k, a, b):
        packed, mean_abs = ops.keras_xnor_pack_filter(k)  # [units, words]; once while unchanged
        return ops.keras_xnor_bin_dense(x, packed, mean_abs if a is None else a, b, **attrs)

    return _with_simulated_gradient(forward, simulation, inputs, kernel, alpha, bias)


def binary_conv2d_dot(xb, wb, *, strides, padding, dilation_rate, convolution, groups=1):
    """``sign(xb) (*) sign(wb)`` by the compiled op, differentiated as ``convolution(xb, wb)``.

    The training path of the layers. ``xb`` and ``wb`` are the quantizers' outputs (exactly +-1,
    their straight-through gradients already attached), so the integer-valued dot the op
    returns (alpha = 1, no K, no bias) equals ``convolution(xb, wb)``, the simulation's float
    conv of +-1 tensors, SAME zero padding included. The layer then applies alpha, K and the
    bias in TF, so autodiff handles them exactly as in the simulation. Only the conv itself
    gets a custom gradient: being linear, its gradients need only its inputs
    (Conv2DBackpropInput/Filter of ``dy``), so inside ``tf.function`` the float forward written
    in ``grad`` is pruned and training skips one of the simulation's three float convs.

    Args:
        xb: float32 NHWC +-1 input. wb: float32 HWIO +-1 kernel.
        strides, dilation_rate: 2 ints; padding: "same"/"valid".
        convolution: callable ``(xb, wb) -> NHWC``, the layer's float conv (for the gradient).
        groups: channel groups (``wb`` is ``[KH, KW, C / groups, O]``), as in
            :func:`bin_conv2d`.
    """
    ops = load_ops()
    wb = tf.convert_to_tensor(wb)
    if wb.shape.rank != 4 or wb.shape[2] is None or wb.shape[3] is None:
        raise ValueError("binary_conv2d_dot: wb must be HWIO with known I and O, got %s" % wb.shape)
    attrs = _conv_attrs(strides, padding, dilation_rate, int(wb.shape[2]), False, False)
    ones = tf.ones([wb.shape[3]], tf.float32)
    zeros = tf.zeros([wb.shape[3]], tf.float32)

    def dot(x, w):
        packed, _ = ops.keras_xnor_pack_filter(w, cache=False)  # OHWI; w is new at every step
        conv = functools.partial(ops.keras_xnor_bin_conv2d, **attrs)
        return _per_group(conv, groups, x, packed, ones, zeros)

    return _with_linear_gradient(dot, convolution, xb, wb)


def binary_dense_dot(xb, wb, *, matmul):
    """``sign(xb) . sign(wb)`` by the compiled op, differentiated as ``matmul(xb, wb)``.

    The dense twin of :func:`binary_conv2d_dot`: ``xb`` float32 ``[N, C]`` +-1, ``wb`` float32
    ``[C, units]`` +-1, ``matmul`` the layer's float product (for the gradient).
    """
    ops = load_ops()
    wb = tf.convert_to_tensor(wb)
    if wb.shape.rank != 2 or wb.shape[0] is None or wb.shape[1] is None:
        raise ValueError("binary_dense_dot: wb must be [C, units] with known sizes, got %s"
                         % wb.shape)
    attrs = {spec.ATTR_IN_CHANNELS: int(wb.shape[0]), spec.ATTR_USE_K: False,
             spec.ATTR_RELU: False}
    ones = tf.ones([wb.shape[1]], tf.float32)
    zeros = tf.zeros([wb.shape[1]], tf.float32)

    def dot(x, w):
        packed, _ = ops.keras_xnor_pack_filter(w, cache=False)  # [units, words]; new every step
        return ops.keras_xnor_bin_dense(x, packed, ones, zeros, **attrs)

    return _with_linear_gradient(dot, matmul, xb, wb)


def _with_linear_gradient(dot, linear, xb, wb):
    """Runs ``dot(xb, wb)`` and differentiates it as the bilinear float op ``linear``."""
    xb = _as_float32(xb)
    wb = _as_float32(wb)

    @tf.custom_gradient
    def run(x, w):
        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch([x, w])
                y = linear(x, w)
            return tape.gradient(y, [x, w], output_gradients=dy)

        return dot(x, w), grad

    return run(xb, wb)


def _with_simulated_gradient(forward, simulation, inputs, kernel, alpha, bias):
    """Runs ``forward`` (float32) and differentiates it as ``simulation``.

    ``alpha`` None stands for eq. 6's ``mean |W|`` of ``kernel``: ``forward`` gets None and
    takes it from the op that packs the kernel (cached with it), and the gradient
    differentiates ``simulation`` with ``alpha = quantizers.mean_abs(kernel)``, so it reaches
    the kernel through alpha as well, exactly as in the simulation.
    """
    inputs = tf.convert_to_tensor(inputs)
    out_dtype = inputs.dtype if inputs.dtype.is_floating else tf.float32
    x = _as_float32(inputs)
    k = _as_float32(kernel)
    alpha_from_kernel = alpha is None
    has_bias = bias is not None
    b = _as_float32(bias) if has_bias else tf.zeros(tf.shape(k)[-1:], tf.float32)
    sources = [x, k, b] if alpha_from_kernel else [x, k, b, _as_float32(alpha)]

    @tf.custom_gradient
    def run(*args):
        x, k, b = args[:3]
        a = None if alpha_from_kernel else args[3]

        def grad(dy):
            with tf.GradientTape() as tape:
                tape.watch(args)
                alpha_sim = quantizers.mean_abs(k) if alpha_from_kernel else a
                y_sim = simulation(x, k, alpha_sim, b if has_bias else None)
            grads = tape.gradient(
                y_sim,
                list(args),
                output_gradients=tf.cast(dy, y_sim.dtype),
                unconnected_gradients=tf.UnconnectedGradients.ZERO,
            )
            return [tf.cast(g, s.dtype) for g, s in zip(grads, args)]

        return forward(x, k, a, b), grad

    return tf.cast(run(*sources), out_dtype)


# ----------------------------------------------------------------------------------------------
# Gradients of the raw ops (used when the ops are called directly, not via bin_conv2d/bin_dense).


def _attr(op, name):
    value = op.get_attr(name)
    return value.decode() if isinstance(value, bytes) else value


def _raw_op_gradient(reference, op, dy, attr_names):
    x, packed, alpha, bias = op.inputs
    attrs = {name: _attr(op, name) for name in attr_names}
    sources = [x, alpha, bias]
    with tf.GradientTape() as tape:
        tape.watch(sources)
        y = reference(x, packed, alpha, bias, **attrs)
    dx, dalpha, dbias = tape.gradient(
        y, sources, output_gradients=dy, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return dx, None, dalpha, dbias  # the packed filter is integer: no gradient


def _bin_conv2d_grad(op, dy):
    """Straight-through for the input, exact for K, alpha and bias (bin_conv2d_reference)."""
    names = [
        spec.ATTR_STRIDES,
        spec.ATTR_PADDING,
        spec.ATTR_DILATIONS,
        spec.ATTR_IN_CHANNELS,
        spec.ATTR_USE_K,
        spec.ATTR_RELU,
    ]
    return _raw_op_gradient(bin_conv2d_reference, op, dy, names)


def _bin_dense_grad(op, dy):
    """As :func:`_bin_conv2d_grad`, through bin_dense_reference."""
    names = [spec.ATTR_IN_CHANNELS, spec.ATTR_USE_K, spec.ATTR_RELU]
    return _raw_op_gradient(bin_dense_reference, op, dy, names)


def _register_gradients():
    for name, function in (
        (spec.BIN_CONV2D_OP, _bin_conv2d_grad),
        (spec.BIN_DENSE_OP, _bin_dense_grad),
    ):
        try:
            tf.RegisterGradient(name)(function)
        except KeyError:  # already registered (module reloaded)
            pass
    for name in (spec.PACK_BITS_OP, spec.PACK_FILTER_OP):
        try:
            tf.no_gradient(name)
        except KeyError:
            pass


_register_gradients()


# ----------------------------------------------------------------------------------------------
# Argument helpers.


def _as_float32(x):
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def _pair(value, name):
    if isinstance(value, numbers.Integral):
        value = (value, value)
    try:
        items = tuple(value)
    except TypeError:
        items = ()
    # Whole numbers only: int(1.5) would quietly run a stride of 1.
    whole = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items)
    pair = tuple(int(v) for v in items) if whole else ()
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError("%s must be one int or 2 ints >= 1, got %r" % (name, value))
    return pair


def _padding(padding):
    text = padding.decode() if isinstance(padding, bytes) else str(padding)
    text = text.upper()
    if text not in (spec.PADDING_SAME, spec.PADDING_VALID):
        raise ValueError('padding must be "same" or "valid", got %r' % (padding,))
    return text
