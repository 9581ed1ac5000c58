"""Weights packed once: KerasXnorPackFilter and the conv and dense ops' prepared-filter caches.

The ops remember what they derived from a weight buffer (custom_ops/tf/held_tensor_cache.h)
and reuse it while TensorFlow hands them the same, unchanged buffer. These tests pin the two
halves of that contract: (1) unchanged weights are not packed again (the op returns the very
tensor it made before), and (2) every way the weights can change (assign, assign_add/sub, an
optimizer step, a constraint, model.fit, set_weights) is seen at the next call, in eager mode
and inside tf.function, with results equal to the pure-TF reference.
"""

import ctypes
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_xnor
from keras_xnor import ops, spec

pytestmark = pytest.mark.skipif(
    not ops.compiled_ops_available(), reason="compiled ops not built (run `make ops`)"
)


def work_counts():
    """(filters packed, filters prepared, entries all caches hold now) in this process, from
    the op library."""
    ops.load_ops()
    lib = ctypes.CDLL(ops.library_path())  # the already loaded library: same counters
    counts = []
    for name in ("keras_xnor_tf_filter_packs", "keras_xnor_tf_filter_prepares",
                 "keras_xnor_tf_cache_entries"):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        counts.append(fn())
    return tuple(counts)


def packs():
    return work_counts()[0]


def prepares():
    return work_counts()[1]


@pytest.mark.parametrize(
    "shape", [(3, 3, 70, 33), (1, 1, 5, 2), (300, 7), (2, 2, 32, 1), (11, 1, 65, 3), (1, 64)]
)
def test_pack_filter_equals_transpose_then_pack(shape):
    rng = np.random.default_rng(sum(shape))
    kernel = rng.standard_normal(shape).astype(np.float32)
    kernel[..., 0] = 0.0  # sign(0) = +1
    kernel.flat[::7] = -0.0
    packed, mean_abs = ops.pack_filter(kernel)
    reference, reference_mean_abs = ops.pack_filter_reference(kernel)
    assert packed.shape == (shape[-1],) + shape[:-2] + (spec.packed_words(shape[-2]),)
    np.testing.assert_array_equal(packed.numpy(), reference.numpy())
    np.testing.assert_allclose(mean_abs.numpy(), reference_mean_abs.numpy(), rtol=1e-6)


def test_pack_filter_shape_function_and_errors():
    fn = tf.function(lambda k: ops.pack_filter(k)).get_concrete_function(
        tf.TensorSpec([3, 5, 40, 7], tf.float32)
    )
    packed, mean_abs = fn.structured_outputs
    assert packed.shape.as_list() == [7, 3, 5, 2] and mean_abs.shape.as_list() == [7]
    with pytest.raises(tf.errors.InvalidArgumentError, match="rank >= 2"):
        ops.pack_filter(tf.ones([4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input-channel axis"):
        ops.pack_filter(tf.ones([3, 0, 4]))


@pytest.mark.parametrize("graph", [False, True])
def test_unchanged_weights_are_packed_once(graph):
    pack = tf.function(ops.pack_filter) if graph else ops.pack_filter
    v = tf.Variable(np.random.default_rng(0).standard_normal((3, 3, 64, 16)).astype(np.float32))
    start = packs()
    for _ in range(5):
        pack(v)
    assert packs() - start == 1
    v.assign_add(tf.ones_like(v))
    for _ in range(5):
        pack(v)
    assert packs() - start == 2
    const = tf.constant(v.numpy())
    for _ in range(5):
        pack(const)
    assert packs() - start == 3
    for _ in range(2):
        ops.pack_filter(const, cache=False)
    assert packs() - start == 5


def check_follows_updates(pack):
    rng = np.random.default_rng(3)
    v = tf.Variable(rng.standard_normal((3, 3, 40, 8)).astype(np.float32))

    def expect():
        packed, mean_abs = pack(v)
        reference, reference_mean_abs = ops.pack_filter_reference(v)
        np.testing.assert_array_equal(packed.numpy(), reference.numpy())
        np.testing.assert_allclose(mean_abs.numpy(), reference_mean_abs.numpy(), rtol=1e-6)

    expect()
    expect()  # cached now
    v.assign(-v)
    expect()
    v.assign_sub(tf.fill(v.shape, 0.7))
    expect()
    v.assign_add(tf.fill(v.shape, 1.4))
    expect()
    v[0, 0, 0, 0].assign(-5.0)  # a sliced (scatter) update of one weight
    expect()
    keras.optimizers.SGD(learning_rate=10.0).apply([tf.ones_like(v)], [v])
    expect()


def test_pack_filter_follows_every_update_eager():
    check_follows_updates(ops.pack_filter)


def test_pack_filter_follows_every_update_in_tf_function():
    check_follows_updates(tf.function(ops.pack_filter))


def conv(x, packed, alpha, bias, in_channels):
    return ops.load_ops().keras_xnor_bin_conv2d(
        x, packed, alpha, bias, strides=[1, 1], padding="SAME", dilations=[1, 1],
        in_channels=in_channels, use_k=True, relu=False)


def conv_reference(x, packed, alpha, bias, in_channels):
    return ops.bin_conv2d_reference(
        x, packed, alpha, bias, strides=[1, 1], padding="SAME", dilations=[1, 1],
        in_channels=in_channels, use_k=True, relu=False)


@pytest.mark.parametrize("graph", [False, True])
def test_conv_prepared_filter_follows_an_int32_variable(graph):
    rng = np.random.default_rng(4)
    c, o = 70, 40
    x = tf.constant(rng.standard_normal((2, 9, 9, c)).astype(np.float32))
    alpha = tf.constant(rng.uniform(0.5, 1.0, o).astype(np.float32))
    bias = tf.constant(rng.standard_normal(o).astype(np.float32))
    packed = tf.Variable(ops.pack_bits(rng.standard_normal((o, 3, 3, c))))
    run = tf.function(conv) if graph else conv
    start = prepares()
    for step in range(4):  # the 1st call remembers the filter, the 2nd prepares it
        if step == 3:
            packed.assign(ops.pack_bits(rng.standard_normal((o, 3, 3, c))))
        for _ in range(3):
            y = run(x, packed, alpha, bias, c)
            np.testing.assert_allclose(
                y.numpy(), conv_reference(x, packed, alpha, bias, c).numpy(), rtol=1e-5,
                atol=1e-5)
    assert prepares() - start == 2  # once per filter value, not once per call


def dense(x, packed, alpha, bias, in_channels):
    return ops.load_ops().keras_xnor_bin_dense(
        x, packed, alpha, bias, in_channels=in_channels, use_k=True, relu=False)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("batch", [1, 3, 40])
def test_dense_prepared_filter_follows_an_int32_variable(graph, batch):
    # From the 2nd call a batch of 2 rows or more runs on a PreparedDenseFilter (the channel-lane
    # table tile); one row runs the GEMV on the plain filter and prepares nothing. Every result
    # must equal the reference.
    rng = np.random.default_rng(batch)
    c, o = 333, 70
    x = tf.constant(rng.standard_normal((batch, c)).astype(np.float32))
    alpha = tf.constant(rng.uniform(0.5, 1.0, o).astype(np.float32))
    bias = tf.constant(rng.standard_normal(o).astype(np.float32))
    packed = tf.Variable(ops.pack_bits(rng.standard_normal((o, c))))
    run = tf.function(dense) if graph else dense
    start = prepares()
    for step in range(4):  # the 1st call remembers the filter, the 2nd prepares it
        if step == 3:
            packed.assign(ops.pack_bits(rng.standard_normal((o, c))))
        want = ops.bin_dense_reference(
            x, packed, alpha, bias, in_channels=c, use_k=True, relu=False).numpy()
        for _ in range(3):
            np.testing.assert_allclose(run(x, packed, alpha, bias, c).numpy(), want, rtol=1e-5,
                                       atol=1e-5)
    # Once per filter value, not once per call.
    assert prepares() - start == (2 if batch >= 2 else 0)


def test_kernels_given_the_same_filter_share_one_prepared_copy():
    rng = np.random.default_rng(8)
    c, o = 40, 24
    x = tf.constant(rng.standard_normal((1, 8, 8, c)).astype(np.float32))
    alpha, bias = tf.ones([o]), tf.zeros([o])
    packed = tf.constant(ops.pack_bits(rng.standard_normal((o, 3, 3, c))))
    expected = conv_reference(x, packed, alpha, bias, c).numpy()
    chain = tf.function(lambda: [conv(x, packed, alpha, bias, c) for _ in range(3)])
    single = tf.function(lambda: conv(x, packed, alpha, bias, c))
    start = prepares()
    for _ in range(3):  # three nodes in one graph, another graph, and eager: four kernels
        for y in chain() + [single(), conv(x, packed, alpha, bias, c)]:
            np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert prepares() - start == 1


def test_conv_eager_kernel_shared_by_more_filters_than_cache_entries():
    # Eager mode runs every call with the same attributes on one kernel: 12 filters in turn
    # evict one another from its cache; every result must still be the right one.
    rng = np.random.default_rng(5)
    c, o = 33, 16
    x = tf.constant(rng.standard_normal((1, 6, 6, c)).astype(np.float32))
    alpha, bias = tf.ones([o]), tf.zeros([o])
    filters = [tf.constant(ops.pack_bits(rng.standard_normal((o, 3, 3, c)))) for _ in range(12)]
    expected = [conv_reference(x, f, alpha, bias, c).numpy() for f in filters]
    for _ in range(3):
        for f, e in zip(filters, expected):
            np.testing.assert_allclose(conv(x, f, alpha, bias, c).numpy(), e, rtol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_layer_inference_follows_training_and_set_weights(kind):
    keras.utils.set_random_seed(6)
    if kind == "conv":
        shape = (4, 8, 8, 20)

        def make(impl):
            return keras_xnor.BinConv2D(12, 3, padding="same", implementation=impl)
    else:
        shape = (4, 50)

        def make(impl):
            return keras_xnor.BinDense(12, implementation=impl)

    compiled, simulated = make("compiled"), make("simulation")
    model = keras.Sequential([keras.Input(shape[1:]), compiled])
    twin = keras.Sequential([keras.Input(shape[1:]), simulated])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    y = rng.standard_normal(model.output_shape[:1] and (shape[0],) + model.output_shape[1:])
    y = y.astype(np.float32)

    def expect_same(eager=False):
        twin.set_weights(model.get_weights())
        out = model(x, training=False).numpy() if eager else model.predict(x, verbose=0)
        np.testing.assert_allclose(out, twin(x, training=False).numpy(), rtol=1e-5, atol=1e-5)

    # Each op instance packs a given weight value once: predict's graph has one, eager calls
    # another.
    start = packs()
    for _ in range(3):
        expect_same()
    assert packs() - start == 1
    for _ in range(3):
        expect_same(eager=True)
    assert packs() - start == 2
    before = model.get_weights()[0]
    model.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert not np.array_equal(before, model.get_weights()[0])
    expect_same()
    expect_same(eager=True)
    model.set_weights([-w for w in model.get_weights()])
    expect_same()
    expect_same(eager=True)


def test_cache_can_be_turned_off():
    script = textwrap.dedent("""
        import numpy as np
        from keras_xnor import ops
        k = np.random.default_rng(0).standard_normal((3, 3, 8, 4)).astype(np.float32)
        import tensorflow as tf
        k = tf.constant(k)
        import ctypes
        ops.load_ops()  # first through tf.load_op_library, then ctypes for the counter
        lib = ctypes.CDLL(ops.library_path())
        lib.keras_xnor_tf_filter_packs.restype = ctypes.c_int64
        for _ in range(3):
            got, want = ops.pack_filter(k)[0], ops.pack_filter_reference(k)[0]
            assert (got.numpy() == want.numpy()).all()
        print("PACKS", lib.keras_xnor_tf_filter_packs())
    """)
    env = dict(os.environ, KERAS_XNOR_TF_WEIGHT_CACHE="0", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PACKS 3"


def test_eager_inference_packs_and_prepares_once_for_many_layers():
    # Eager mode runs all 24 layers on one kernel per op, in the same order every call: with
    # fewer cache entries than layers, each call would evict the entry the next one needs.
    rng = np.random.default_rng(12)
    x = tf.constant(rng.standard_normal((1, 6, 6, 16)).astype(np.float32))
    layers = [keras_xnor.BinConv2D(16, 3, padding="same", implementation="compiled")
              for _ in range(24)]

    def run():
        return [layer(x, training=False) for layer in layers]

    first = run()
    run()  # the second sighting of each filter prepares it
    before = work_counts()[:2]
    for _ in range(3):
        for y, expected in zip(run(), first):
            np.testing.assert_array_equal(y.numpy(), expected.numpy())
    assert work_counts()[:2] == before


def test_caches_let_go_of_replaced_weights():
    # An entry only the cache still refers to (the variable has a new buffer) is dropped:
    # the caches never keep old weights alive.
    rng = np.random.default_rng(13)
    x = tf.constant(rng.standard_normal((1, 6, 6, 16)).astype(np.float32))
    layer = keras_xnor.BinConv2D(16, 3, padding="same", implementation="compiled")
    simulation = keras_xnor.BinConv2D(16, 3, padding="same", implementation="simulation")
    layer(x, training=False)
    layer(x, training=False)
    simulation(x)
    entries = work_counts()[2]
    for _ in range(20):
        layer.kernel.assign(rng.standard_normal(layer.kernel.shape))
        simulation.set_weights(layer.get_weights())
        for _ in range(2):
            np.testing.assert_allclose(layer(x, training=False).numpy(), simulation(x).numpy(),
                                       rtol=1e-5, atol=1e-5)
    assert work_counts()[2] <= entries
