"""keras_xnor.models: structure of the paper's networks (first/last float, binary between)."""

import functools

import numpy as np
import pytest

import keras
import keras_xnor
from keras_xnor import models

BINARY_CONV = {"xnor": keras_xnor.BinConv2D, "bwn": keras_xnor.BWNConv2D}
BINARY_DENSE = {"xnor": keras_xnor.BinDense, "bwn": keras_xnor.BWNDense}
BINARY_TYPES = (keras_xnor.BinConv2D, keras_xnor.BWNConv2D, keras_xnor.BinDense,
                keras_xnor.BWNDense)

# Parameter counts pinned per architecture (the same for the three kinds: alpha of eq. 6 is
# computed, not stored). ResNet-18: 11.69 M as in He et al. plus the pre-activation BNs.
PARAMS = {"small": 544_042, "alexnet": 62_443_272, "resnet18": 11_699_368}


@functools.lru_cache(maxsize=None)
def _built(name):
    """Default-argument models, built once per test session (AlexNet holds 62 M weights)."""
    return models.get(name)


def _weighted_layers(model):
    """Conv/dense layers in graph order (those holding a kernel)."""
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense) + BINARY_TYPES)
            or hasattr(layer, "kernel")]


def _is_float(layer):
    return (isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
            and not isinstance(layer, BINARY_TYPES))


@pytest.mark.parametrize("arch", ["small", "alexnet", "resnet18"])
@pytest.mark.parametrize("kind", ["xnor", "bwn", "float"])
def test_structure_first_last_float_binary_between(arch, kind):
    model = _built("%s_%s" % (kind, arch))
    assert model.name == "%s_%s" % (kind, arch)
    layers = _weighted_layers(model)
    assert _is_float(layers[0]) and layers[0].name == "conv1"
    assert isinstance(layers[-1], keras.layers.Dense) and _is_float(layers[-1])
    middle = layers[1:-1]
    if arch == "resnet18":  # the 1x1 projections (shortcut B) stay float by design
        middle = [l for l in middle if not l.name.endswith("_proj")]
        assert len([l for l in layers if l.name.endswith("_proj")]) == 3
    if kind == "float":
        assert all(_is_float(l) for l in middle)
    else:
        allowed = (BINARY_CONV[kind], BINARY_DENSE[kind])
        assert middle and all(type(l) in allowed for l in middle), [type(l) for l in middle]
    assert model.count_params() == PARAMS[arch]
    expected_out = 10 if arch == "small" else 1000
    assert model.output_shape == (None, expected_out)


def test_binary_layer_counts():
    # AlexNet: conv2-5 + fc6, fc7 binary; ResNet-18: the 16 3x3 convs; small: 3 convs + fc5.
    counts = {"alexnet": (4, 2), "resnet18": (16, 0), "small": (3, 1)}
    for arch, (convs, denses) in counts.items():
        model = _built("xnor_" + arch)
        assert sum(isinstance(l, keras_xnor.BinConv2D) for l in model.layers) == convs
        assert sum(isinstance(l, keras_xnor.BinDense) for l in model.layers) == denses


def test_alexnet_feature_map_sizes_match_the_paper():
    model = _built("xnor_alexnet")
    shapes = {l.name: l.output.shape for l in model.layers}
    assert shapes["conv1"][1:3] == (55, 55)
    assert shapes["pool1"][1:3] == (27, 27)
    assert shapes["pool2"][1:3] == (13, 13)
    assert shapes["pool5"][1:] == (6, 6, 256)
    assert shapes["fc6"][1:] == (4096,)


def test_resnet18_stages_and_projections():
    model = models.float_resnet18(num_classes=10, input_shape=(64, 64, 3))
    shapes = {l.name: l.output.shape for l in model.layers}
    assert shapes["pool1"][1:] == (16, 16, 64)
    assert shapes["stage2_block1_add"][1:] == (8, 8, 128)
    assert shapes["stage4_block2_add"][1:] == (2, 2, 512)
    proj = model.get_layer("stage2_block1_proj")
    assert proj.kernel_size == (1, 1) and proj.strides == (2, 2)
    names = {l.name for l in model.layers}
    assert "stage1_block1_proj" not in names  # identity shortcut when shapes match


def test_xnor_bacp_block_is_bn_then_binconv():
    model = _built("xnor_small")
    names = [l.name for l in model.layers]
    # B-A-C-P: BinConv2D binarizes its own input, so BN feeds it directly.
    for conv in ("conv2", "conv3", "conv4"):
        assert names[names.index(conv) - 1] == conv + "_bn"
    assert not any(isinstance(l, keras_xnor.BinaryActivation) for l in model.layers)
    assert names.index("pool2") == names.index("conv2") + 1


def test_cbap_order_and_binary_activation():
    model = models.xnor_small(block_order="CBAP")
    names = [l.name for l in model.layers]
    i = names.index("conv2")
    assert names[i + 1:i + 4] == ["conv2_bn", "conv2_act", "pool2"]
    assert isinstance(model.get_layer("conv2_act"), keras_xnor.BinaryActivation)
    # The classifier takes real inputs: ReLU after the last binary layer.
    assert isinstance(model.get_layer("fc5_relu"), keras.layers.ReLU)
    float_model = models.float_small(block_order="CBAP")
    assert isinstance(float_model.get_layer("conv2_act"), keras.layers.ReLU)


def test_ablation_options_reach_the_layers():
    model = models.xnor_small(kernel_scale="learned", use_k=False)
    binary = [l for l in model.layers if isinstance(l, (keras_xnor.BinConv2D,
                                                         keras_xnor.BinDense))]
    assert binary and all(l.kernel_scale == "learned" and not l.use_k for l in binary)
    # A learned alpha is one trainable weight per output filter.
    assert model.count_params() == PARAMS["small"] + 64 + 128 + 128 + 256
    bwn = models.bwn_small(kernel_scale="none")
    assert all(l.kernel_scale == "none" for l in bwn.layers
               if isinstance(l, (keras_xnor.BWNConv2D, keras_xnor.BWNDense)))


def test_forward_pass_and_serialization_round_trip(tmp_path):
    model = models.xnor_small(implementation="simulation")
    x = np.random.default_rng(0).normal(size=(3, 28, 28, 1)).astype("float32")
    y = model.predict(x, verbose=0)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, rtol=1e-5, atol=1e-6)


def test_logits_option_and_width():
    model = models.float_small(classifier_activation=None, width=2, num_classes=5)
    assert model.get_layer("conv2").filters == 128
    assert model.output_shape == (None, 5)
    assert model.get_layer("fc6").activation.__name__ == "linear"


@pytest.mark.parametrize("weight_decay", [5e-4, 1e-4])
def test_weight_decay_adds_weight_decay_times_w_to_the_gradient(weight_decay):
    # Caffe / Torch weight decay, as the recipes' values (5e-4 AlexNet, 1e-4 ResNet-18)
    # mean it: d(penalty)/dw = weight_decay * w, on the full-precision kernels only.
    import tensorflow as tf  # noqa: PLC0415

    model = models.bwn_small(weight_decay=weight_decay)
    regularized = [l for l in model.layers if getattr(l, "kernel_regularizer", None)]
    assert [l.name for l in regularized] == ["conv1", "fc6"]  # first and last layer
    kernels = [l.kernel for l in regularized]
    with tf.GradientTape() as tape:
        penalty = tf.add_n(model.losses)
    grads = tape.gradient(penalty, [k.value for k in kernels])
    for kernel, grad in zip(kernels, grads):
        np.testing.assert_allclose(grad.numpy(), weight_decay * kernel.numpy(), rtol=1e-5,
                                   atol=1e-12)
    assert models.float_small().losses == []  # off by default


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="xnor", weight_decay=-1e-4), "weight_decay"),
    (dict(kind="ternary"), "kind"),
    (dict(kind="xnor", block_order="ABCP"), "block_order"),
    (dict(kind="xnor", kernel_scale="max"), "kernel_scale"),
    (dict(kind="float", use_k=False), "use_k"),
    (dict(kind="xnor", num_classes=1), "num_classes"),
    (dict(kind="xnor", input_shape=(28, 28)), "input_shape"),
    (dict(kind="xnor", input_shape=None), "input_shape"),
    (dict(kind="xnor", input_shape=(28, 0, 1)), "input_shape"),
    (dict(kind="xnor", input_shape=(None, None, 1)), "fixed input height and width"),
    (dict(kind="xnor", input_shape=(7, 7, 1)), "too small.*>= 8"),
    (dict(kind="xnor", num_classes="10"), "num_classes"),
    (dict(kind="xnor", use_k="no"), "use_k"),
    (dict(kind="xnor", weight_decay="1e-4"), "weight_decay"),
    (dict(kind="bwn", implementation="fast"), "implementation"),
    (dict(kind="float", implementation="fast"), "implementation"),
    (dict(kind="xnor", width=1.5), "width"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.small(**kwargs)


def test_alexnet_smallest_input_and_numpy_arguments():
    with pytest.raises(ValueError, match="too small.*>= 63"):
        models.xnor_alexnet(input_shape=(62, 62, 3), num_classes=10)
    model = models.xnor_alexnet(input_shape=(63, 63, 3), num_classes=10)
    assert model.get_layer("flatten").output.shape[1] == 256  # a 1x1 map before fc6
    # NumPy scalars (e.g. from dataset metadata) are fine.
    model = models.small(num_classes=np.int64(10), input_shape=(np.int64(8), 8, 1),
                         weight_decay=np.float32(1e-4), use_k=np.bool_(True))
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("name", ["float_resnet18", "xnor_resnet18", "bwn_alexnet",
                                  "xnor_small"])
def test_builders_are_nhwc_whatever_the_global_image_data_format(name):
    # The builders take (H, W, C) inputs; Keras' own layers would otherwise follow
    # keras.config.image_data_format() and read the height axis as channels.
    before = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = models.get(name, input_shape=(64, 64, 3), num_classes=10)
    finally:
        keras.config.set_image_data_format(before)
    assert model.get_layer("conv1").kernel.shape[2] == 3
    assert all(getattr(layer, "data_format", "channels_last") == "channels_last"
               for layer in model.layers)
    assert model.output_shape == (None, 10)


def test_get_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="xnor_resnet18"):
        models.get("xnor_vgg16")
    assert set(models.NAMES) >= {"xnor_small", "bwn_small", "float_small", "xnor_alexnet",
                                 "bwn_alexnet", "float_alexnet", "xnor_resnet18",
                                 "bwn_resnet18", "float_resnet18"}
