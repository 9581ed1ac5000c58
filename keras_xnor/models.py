"""Reference networks of the XNOR-Net paper: AlexNet, ResNet-18 and a small 28x28 net.

Every builder takes ``kind``:

* ``"float"``: full-precision convolutions and dense layers (the paper's baseline).
* ``"bwn"``: Binary-Weight-Networks, ``W ~ alpha * sign(W)`` with ``alpha = mean|W|`` per
  output filter (eq. 6), real-valued inputs (``BWNConv2D`` / ``BWNDense``).
* ``"xnor"``: XNOR-Networks, ``I * W ~ (sign(I) (*) sign(W)) . K alpha`` (eq. 11) with
  ``BinConv2D`` / ``BinDense``, which binarize their own input and compute K from the
  real-valued input (they are BinActiv + BinConv of Fig. 3 in one layer).

In all kinds the first and the last layer are full precision (as in the paper); every
layer in between is of ``kind``. The three kinds of one network have the same layers, widths
and pooling; only the conv/dense layer class and the activation differ.

Block order (``block_order``; Fig. 3, ablated in Table 3b):

* ``"BACP"`` (default, the paper's XNOR block): ``BatchNorm -> Activ -> Conv -> Pool``.
  For xnor, Activ + Conv is the one ``BinConv2D`` (sign of the normalized input, K from its
  magnitude). For float and bwn the activation is ReLU, which makes the network a
  pre-activation net (He et al. 2016) with exactly the xnor net's layout, so the
  float / bwn / xnor comparison changes nothing but the arithmetic.
* ``"CBAP"``: the conventional ``Conv -> BatchNorm -> Activ -> Pool``. For xnor, Activ is a
  ``BinaryActivation`` (sign), so the following max-pool sees +-1 values and returns mostly
  +1: the information loss the paper cites as the reason for B-A-C-P. For float / bwn this is
  the standard layout, i.e. the paper's BWN AlexNet (AlexNet with BatchNorm whose convs have
  binary weights).

The float stem is ``Conv -> BatchNorm -> ReLU -> Pool`` (in CBAP mode for xnor the ReLU is
the sign, so that every binary layer sees the CBAP input); the head is
``BatchNorm -> ReLU -> Dense(num_classes)`` in full precision, as in the authors' code.

Ablation options, passed to every binary layer: ``kernel_scale`` ("mean_abs" = alpha of
eq. 6, "learned" = alpha a trainable per-filter weight, "none" = no alpha) and, for xnor,
``use_k`` (with or without the K map of eq. 11).

Mixed precision: under a float16 / bfloat16 dtype policy the classifier (the last Dense and
its softmax) is still float32, as Keras recommends for a model's outputs.

Building is cheap (no data, no compilation), so the 224x224 networks can be built for
export and benchmarks in seconds.
"""

import numbers

import keras

KINDS = ("float", "bwn", "xnor")
BLOCK_ORDERS = ("BACP", "CBAP")
KERNEL_SCALES = ("mean_abs", "learned", "none")
IMPLEMENTATIONS = ("auto", "simulation", "compiled")
# Every layer gets it explicitly: the builders take NHWC inputs whatever
# keras.config.image_data_format() says (with "channels_first", Keras' own layers would
# otherwise read the height axis as channels).
_NHWC = "channels_last"


def _xl():
    # Imported lazily so that ``keras_xnor.models`` can be imported (and its docs read)
    # while the layer module is being built; the layers register their serialization
    # names on import.
    from keras_xnor import layers  # noqa: PLC0415

    return layers


class _Builder:
    """Creates the layers of one network of one kind with consistent naming and options."""

    def __init__(self, kind, block_order, kernel_scale, use_k, weight_decay=None,
                 implementation=None, synchronized_batchnorm=False):
        if kind not in KINDS:
            raise ValueError("kind must be one of %s, got %r" % (KINDS, kind))
        if block_order not in BLOCK_ORDERS:
            raise ValueError("block_order must be one of %s, got %r" % (BLOCK_ORDERS, block_order))
        if kernel_scale not in KERNEL_SCALES:
            raise ValueError(
                "kernel_scale must be one of %s, got %r" % (KERNEL_SCALES, kernel_scale))
        if kind != "xnor" and not use_k:
            raise ValueError("use_k=False only applies to kind='xnor' (K is the XNOR input "
                             "scale of eq. 11); got kind=%r" % kind)
        if isinstance(use_k, str) or use_k not in (True, False):
            raise ValueError("use_k must be True or False, got %r" % (use_k,))
        if implementation is not None and implementation not in IMPLEMENTATIONS:
            raise ValueError("implementation must be None or one of %s, got %r"
                             % (IMPLEMENTATIONS, implementation))
        self.kind = kind
        self.order = block_order
        self.kernel_scale = kernel_scale
        self.use_k = bool(use_k)
        if weight_decay is not None and (
                isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real)
                or not weight_decay >= 0):
            raise ValueError("weight_decay must be a number >= 0, got %r" % (weight_decay,))
        # Weight decay as in Caffe / Torch (and the papers' setups): weight_decay * w added to
        # the gradient. Keras' L2(l2) adds l2 * sum(w^2), whose gradient is 2 * l2 * w.
        self.regularizer = (keras.regularizers.L2(float(weight_decay) / 2) if weight_decay
                            else None)
        self.implementation = implementation
        self.synchronized_batchnorm = bool(synchronized_batchnorm)

    def _binary_options(self):
        options = dict(kernel_scale=self.kernel_scale)
        if self.implementation is not None:
            options["implementation"] = self.implementation
        return options

    # -- single layers -------------------------------------------------------------------

    def bn(self, name):
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-4, name=name,
                                               synchronized=self.synchronized_batchnorm)

    def float_conv(self, filters, kernel_size, strides, padding, name, use_bias=False):
        return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                                   data_format=_NHWC,
                                   use_bias=use_bias, kernel_initializer="he_normal",
                                   kernel_regularizer=self.regularizer, name=name)

    def conv(self, filters, kernel_size, strides, padding, name):
        """The conv of a middle block: float, BWN or XNOR (which binarizes its own input)."""
        if self.kind == "float":
            return self.float_conv(filters, kernel_size, strides, padding, name)
        xl = _xl()
        common = dict(strides=strides, padding=padding, use_bias=False, name=name,
                      data_format=_NHWC, **self._binary_options())
        if self.kind == "bwn":
            common.pop("implementation", None)
            return xl.BWNConv2D(filters, kernel_size, **common)
        return xl.BinConv2D(filters, kernel_size, use_k=self.use_k, **common)

    def dense(self, units, name):
        if self.kind == "float":
            return keras.layers.Dense(units, use_bias=False, kernel_initializer="he_normal",
                                      kernel_regularizer=self.regularizer, name=name)
        xl = _xl()
        common = dict(use_bias=False, name=name, **self._binary_options())
        if self.kind == "bwn":
            common.pop("implementation", None)
            return xl.BWNDense(units, **common)
        return xl.BinDense(units, use_k=self.use_k, **common)

    def activation(self, name):
        """The A of a CBAP block: sign for xnor, ReLU otherwise."""
        if self.kind == "xnor":
            return _xl().BinaryActivation(name=name)
        return keras.layers.ReLU(name=name)

    # -- blocks --------------------------------------------------------------------------

    def unit(self, x, make_layer, name, pool=None, last_activation=None):
        """One block in the chosen order around ``make_layer`` (a conv or a dense layer).

        Args:
            x: input tensor.
            make_layer: the block's conv/dense layer (float, BWN or XNOR).
            name: prefix of the block's layer names.
            pool: optional pooling layer applied last.
            last_activation: in CBAP mode, overrides the activation (the unit before the
                float classifier uses ReLU, as the classifier takes real inputs).
        """
        if self.order == "BACP":
            x = self.bn(name + "_bn")(x)
            if self.kind != "xnor":  # BinConv2D/BinDense binarize their input themselves
                x = keras.layers.ReLU(name=name + "_relu")(x)
            x = make_layer(x)
        else:
            x = make_layer(x)
            x = self.bn(name + "_bn")(x)
            act = last_activation or self.activation(name + "_act")
            x = act(x)
        if pool is not None:
            x = pool(x)
        return x

    def stem(self, x, conv, pool, name="conv1"):
        """The full-precision first layer: Conv -> BN -> ReLU (sign in CBAP xnor) -> Pool."""
        x = conv(x)
        x = self.bn(name + "_bn")(x)
        if self.order == "CBAP":
            x = self.activation(name + "_act")(x)
        else:
            x = keras.layers.ReLU(name=name + "_relu")(x)
        if pool is not None:
            x = pool(x)
        return x

    def head(self, x, num_classes, classifier_activation, name="predictions"):
        """The full-precision last layer, preceded by BN -> ReLU in BACP mode."""
        if self.order == "BACP":
            x = self.bn("head_bn")(x)
            x = keras.layers.ReLU(name="head_relu")(x)
        return keras.layers.Dense(num_classes, activation=classifier_activation,
                                  kernel_regularizer=self.regularizer,
                                  dtype="float32", name=name)(x)


def _max_pool(size, strides=None, padding="valid", name=None):
    return keras.layers.MaxPooling2D(size, strides, padding=padding, data_format=_NHWC,
                                     name=name)


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_common(num_classes, input_shape, fixed_size=None):
    """Validates the arguments every builder takes; returns them as Python ints.

    fixed_size: for networks with a Flatten (AlexNet, small), a function of (height, width)
    giving the feature map's (height, width) before the first dense layer; the input size
    must then be given and make that map non-empty.
    """
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError("num_classes must be an integer >= 2, got %r" % (num_classes,))
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if shape is None or len(shape) != 3 or not all(
            d is None or (_is_int(d) and d >= 1) for d in shape):
        raise ValueError("input_shape must be (height, width, channels) of positive integers "
                         "(height and width may be None where the network allows it), got %r"
                         % (input_shape,))
    if shape[2] is None:
        raise ValueError("input_shape needs a fixed number of channels, got %r" % (shape,))
    if fixed_size is not None:
        if shape[0] is None or shape[1] is None:
            raise ValueError("this network flattens its last feature map into a dense layer, "
                             "so it needs a fixed input height and width, got %r" % (shape,))
        if min(fixed_size(shape[0], shape[1])) < 1:
            smallest = next(n for n in range(1, 4096) if min(fixed_size(n, n)) >= 1)
            raise ValueError("input_shape %r is too small for this network: its last feature "
                             "map would be empty (height and width must be >= %d)"
                             % (shape, smallest))
    return int(num_classes), tuple(None if d is None else int(d) for d in shape)


def _pool_out(size, stride, n):
    return (n - size) // stride + 1 if n >= size else 0


def _alexnet_fc6_size(h, w):
    def side(n):
        n = _pool_out(11, 4, n + 4)  # conv1 11x11/4 valid after the zero padding of 2
        n = _pool_out(3, 2, n)       # pool1
        n = _pool_out(3, 2, n)       # pool2 (conv2-5 are "same")
        return _pool_out(3, 2, n)    # pool5

    return side(h), side(w)


def _small_fc5_size(h, w):
    return h // 8, w // 8  # three 2x2 max-pools


def alexnet(kind="xnor", num_classes=1000, input_shape=(224, 224, 3), kernel_scale="mean_abs",
            block_order="BACP", use_k=True, classifier_activation="softmax",
            weight_decay=None, implementation=None, synchronized_batchnorm=False,
            name=None):
    """AlexNet as trained in the XNOR-Net paper (BatchNorm, no LRN, no dropout).

    Layout (224x224 input; the feature map sizes match the original 55-27-13-6)::

        conv1  11x11/4, 96  (float)  -> BN -> ReLU -> maxpool 3/2
        conv2  5x5, 256     (kind)   -> maxpool 3/2
        conv3  3x3, 384     (kind)
        conv4  3x3, 384     (kind)
        conv5  3x3, 256     (kind)   -> maxpool 3/2
        fc6    4096         (kind)
        fc7    4096         (kind)
        fc8    num_classes  (float)  softmax

    with every ``kind`` layer inside a B-A-C-P (or C-B-A-P) block, see the module docstring.

    Args:
        kind: "xnor", "bwn" or "float".
        num_classes: number of output classes.
        input_shape: (H, W, C); 224x224x3 as in the paper. Other sizes work as long as
            the feature map before fc6 is non-empty (height and width >= 63).
        kernel_scale: alpha of the binary layers: "mean_abs" (eq. 6), "learned" or "none".
        block_order: "BACP" (paper) or "CBAP" (conventional; the Table 3b ablation).
        use_k: xnor only: scale by the K map of eq. 11 (False = alpha only).
        classifier_activation: activation of the last layer ("softmax" or None for logits).
        weight_decay: optional weight decay of the full-precision kernels, as in Caffe /
            Torch: each kernel's gradient gets ``weight_decay * w`` added, i.e. the loss gets
            the L2 penalty ``weight_decay / 2 * sum(w^2)`` (``keras.regularizers.L2(
            weight_decay / 2)``).
        implementation: xnor layers' ``implementation`` ("auto", "simulation" or
            "compiled"; default: the layers' default, "auto").
        synchronized_batchnorm: BatchNorm statistics over the global batch of all
            replicas of a tf.distribute strategy (keeps the moving averages identical on
            every worker); no effect without a strategy.
        name: model name (default "<kind>_alexnet").

    Returns:
        An uncompiled ``keras.Model``.
    """
    num_classes, input_shape = _check_common(num_classes, input_shape, _alexnet_fc6_size)
    b = _Builder(kind, block_order, kernel_scale, use_k, weight_decay, implementation,
                 synchronized_batchnorm)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    # 224 -> 55 as in the paper
    x = keras.layers.ZeroPadding2D(2, data_format=_NHWC, name="conv1_pad")(inputs)
    x = b.stem(x, b.float_conv(96, 11, 4, "valid", "conv1"), _max_pool(3, 2, name="pool1"))
    x = b.unit(x, b.conv(256, 5, 1, "same", "conv2"), "conv2",
               pool=_max_pool(3, 2, name="pool2"))
    x = b.unit(x, b.conv(384, 3, 1, "same", "conv3"), "conv3")
    x = b.unit(x, b.conv(384, 3, 1, "same", "conv4"), "conv4")
    x = b.unit(x, b.conv(256, 3, 1, "same", "conv5"), "conv5",
               pool=_max_pool(3, 2, name="pool5"))
    x = keras.layers.Flatten(data_format=_NHWC, name="flatten")(x)
    x = b.unit(x, b.dense(4096, "fc6"), "fc6")
    last = keras.layers.ReLU(name="fc7_relu") if b.order == "CBAP" else None
    x = b.unit(x, b.dense(4096, "fc7"), "fc7", last_activation=last)
    outputs = b.head(x, num_classes, classifier_activation, name="fc8")
    return keras.Model(inputs, outputs, name=name or "%s_alexnet" % kind)


def resnet18(kind="xnor", num_classes=1000, input_shape=(224, 224, 3), kernel_scale="mean_abs",
             block_order="BACP", use_k=True, classifier_activation="softmax",
             weight_decay=None, implementation=None, synchronized_batchnorm=False,
            name=None):
    """ResNet-18 (He et al. 2016) with binary 3x3 convolutions, as in the XNOR-Net paper.

    Stem: 7x7/2 conv, 64 (float) -> BN -> ReLU -> 3x3/2 max-pool. Then four stages of two
    basic blocks (64, 128, 256, 512 filters; stride 2 at the start of stages 2-4), then
    global average pooling and the float classifier.

    Basic block, BACP (pre-activation layout; for xnor BN -> BinConv2D is B-A-C)::

        y = conv_a(BN(x))            3x3, stride s     (kind)
        y = conv_b(BN(y))            3x3               (kind)
        out = y + shortcut(x)

    CBAP: ``y = A(BN(conv_a(x))); y = BN(conv_b(y)); out = A(y + shortcut(x))``.

    The shortcut is the identity, or (shortcut type B) a 1x1 projection with BatchNorm when
    the shape changes. Projections are kept full precision: they hold ~1% of the MACs,
    and the residual stream they feed is real-valued in the paper too, so binarizing them
    would cost accuracy for no measurable speed.

    Args: as for :func:`alexnet`.

    Returns:
        An uncompiled ``keras.Model``.
    """
    num_classes, input_shape = _check_common(num_classes, input_shape)
    b = _Builder(kind, block_order, kernel_scale, use_k, weight_decay, implementation,
                 synchronized_batchnorm)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = b.stem(inputs, b.float_conv(64, 7, 2, "same", "conv1"),
               _max_pool(3, 2, padding="same", name="pool1"))
    in_filters = 64
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            strides = 2 if (stage > 0 and block == 0) else 1
            prefix = "stage%d_block%d" % (stage + 1, block + 1)
            shortcut = x
            if strides != 1 or in_filters != filters:
                shortcut = b.float_conv(filters, 1, strides, "valid", prefix + "_proj")(x)
                shortcut = b.bn(prefix + "_proj_bn")(shortcut)
            if b.order == "BACP":
                y = b.unit(x, b.conv(filters, 3, strides, "same", prefix + "_conv_a"),
                           prefix + "_a")
                y = b.unit(y, b.conv(filters, 3, 1, "same", prefix + "_conv_b"),
                           prefix + "_b")
                x = keras.layers.Add(name=prefix + "_add")([y, shortcut])
            else:
                y = b.unit(x, b.conv(filters, 3, strides, "same", prefix + "_conv_a"),
                           prefix + "_a")
                y = b.conv(filters, 3, 1, "same", prefix + "_conv_b")(y)
                y = b.bn(prefix + "_b_bn")(y)
                x = keras.layers.Add(name=prefix + "_add")([y, shortcut])
                last = stage == 3 and block == 1
                x = (keras.layers.ReLU(name=prefix + "_out_relu") if last
                     else b.activation(prefix + "_out_act"))(x)
            in_filters = filters
    if b.order == "BACP":
        x = b.bn("head_bn")(x)
        x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=_NHWC, name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation,
                                 kernel_regularizer=b.regularizer, dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs, name=name or "%s_resnet18" % kind)


def small(kind="xnor", num_classes=10, input_shape=(28, 28, 1), kernel_scale="mean_abs",
          block_order="BACP", use_k=True, classifier_activation="softmax",
          weight_decay=None, width=1, implementation=None, synchronized_batchnorm=False,
            name=None):
    """A small XNOR/BWN/float net for 28x28 inputs (Fashion-MNIST, MNIST).

    Layout (channel counts times ``width``; multiples of 32 so the binary layers pack
    into whole 32-bit words)::

        conv1  3x3, 32   (float) -> BN -> ReLU -> maxpool 2     28 -> 14
        conv2  3x3, 64   (kind)  -> maxpool 2                   14 -> 7
        conv3  3x3, 128  (kind)
        conv4  3x3, 128  (kind)  -> maxpool 2                    7 -> 3
        fc5    256       (kind)
        fc6    num_classes (float) softmax

    Args: as for :func:`alexnet`, plus ``width``, an integer channel multiplier.

    Returns:
        An uncompiled ``keras.Model``.
    """
    num_classes, input_shape = _check_common(num_classes, input_shape, _small_fc5_size)
    if not _is_int(width) or width < 1:
        raise ValueError("width must be a positive integer, got %r" % (width,))
    w = int(width)
    b = _Builder(kind, block_order, kernel_scale, use_k, weight_decay, implementation,
                 synchronized_batchnorm)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = b.stem(inputs, b.float_conv(32 * w, 3, 1, "same", "conv1"), _max_pool(2, name="pool1"))
    x = b.unit(x, b.conv(64 * w, 3, 1, "same", "conv2"), "conv2",
               pool=_max_pool(2, name="pool2"))
    x = b.unit(x, b.conv(128 * w, 3, 1, "same", "conv3"), "conv3")
    x = b.unit(x, b.conv(128 * w, 3, 1, "same", "conv4"), "conv4",
               pool=_max_pool(2, name="pool4"))
    x = keras.layers.Flatten(data_format=_NHWC, name="flatten")(x)
    last = keras.layers.ReLU(name="fc5_relu") if b.order == "CBAP" else None
    x = b.unit(x, b.dense(256 * w, "fc5"), "fc5", last_activation=last)
    outputs = b.head(x, num_classes, classifier_activation, name="fc6")
    return keras.Model(inputs, outputs, name=name or "%s_small" % kind)


def _alias(builder, kind):
    def make(**kwargs):
        return builder(kind=kind, **kwargs)

    make.__name__ = "%s_%s" % (kind, builder.__name__)
    make.__qualname__ = make.__name__
    make.__doc__ = "``%s(kind=%r, **kwargs)``; see :func:`%s`." % (
        builder.__name__, kind, builder.__name__)
    return make


xnor_small = _alias(small, "xnor")
bwn_small = _alias(small, "bwn")
float_small = _alias(small, "float")
xnor_alexnet = _alias(alexnet, "xnor")
bwn_alexnet = _alias(alexnet, "bwn")
float_alexnet = _alias(alexnet, "float")
xnor_resnet18 = _alias(resnet18, "xnor")
bwn_resnet18 = _alias(resnet18, "bwn")
float_resnet18 = _alias(resnet18, "float")

_REGISTRY = {
    "small": small, "alexnet": alexnet, "resnet18": resnet18,
    "xnor_small": xnor_small, "bwn_small": bwn_small, "float_small": float_small,
    "xnor_alexnet": xnor_alexnet, "bwn_alexnet": bwn_alexnet, "float_alexnet": float_alexnet,
    "xnor_resnet18": xnor_resnet18, "bwn_resnet18": bwn_resnet18,
    "float_resnet18": float_resnet18,
}

NAMES = tuple(sorted(_REGISTRY))


def get(name, **kwargs):
    """Builds the model called ``name`` (e.g. "xnor_resnet18", or "small" with kind=...).

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ValueError("unknown model %r; known models: %s" % (name, ", ".join(NAMES))) from None
    return builder(**kwargs)
