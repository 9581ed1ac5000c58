"""keras_xnor.training.recipes: each preset builds the optimizer and schedule it states."""

import math

import keras
import pytest

from keras_xnor.training import recipes

SPE = 10  # steps per epoch used to turn epochs into steps


def _lr(schedule, step):
    return float(schedule(step))


def test_alexnet_bwn_sgd_lr_times_0_01_every_4_epochs():
    r = recipes.get("alexnet_bwn")
    assert (r.batch_size, r.epochs) == (512, 16)
    opt = r.build_optimizer(SPE)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    sched = r.learning_rate_schedule(SPE)
    expected = {0: 0.1, 4 * SPE - 1: 0.1, 4 * SPE: 1e-3, 8 * SPE - 1: 1e-3, 8 * SPE: 1e-5,
                12 * SPE: 1e-7, 16 * SPE - 1: 1e-7}
    for step, lr in expected.items():
        assert _lr(sched, step) == pytest.approx(lr, rel=1e-5), step


def test_alexnet_xnor_is_adam_with_stated_schedule():
    r = recipes.get("alexnet_xnor")
    assert (r.batch_size, r.epochs) == (512, 16)
    opt = r.build_optimizer(SPE)
    assert isinstance(opt, keras.optimizers.Adam)
    sched = r.learning_rate_schedule(SPE)
    for step, lr in {0: 1e-3, 8 * SPE - 1: 1e-3, 8 * SPE: 1e-4, 12 * SPE: 1e-5}.items():
        assert _lr(sched, step) == pytest.approx(lr, rel=1e-5), step


def test_resnet18_lr_0_1_times_0_01_at_30_and_40():
    r = recipes.get("resnet18")
    assert (r.batch_size, r.epochs) == (256, 58)
    opt = r.build_optimizer(SPE)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    sched = r.learning_rate_schedule(SPE)
    expected = {0: 0.1, 30 * SPE - 1: 0.1, 30 * SPE: 1e-3, 40 * SPE - 1: 1e-3, 40 * SPE: 1e-5,
                58 * SPE - 1: 1e-5}
    for step, lr in expected.items():
        assert _lr(sched, step) == pytest.approx(lr, rel=1e-5), step


def test_fashion_mnist_cosine_over_the_run():
    r = recipes.get("fashion_mnist")
    assert (r.batch_size, r.epochs) == (128, 10)
    sched = r.learning_rate_schedule(SPE, epochs=4)
    assert _lr(sched, 0) == pytest.approx(1e-3)
    assert _lr(sched, 2 * SPE) == pytest.approx(5e-4, rel=1e-4)
    assert _lr(sched, SPE) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rel=1e-4)
    assert _lr(sched, 4 * SPE) == pytest.approx(0.0, abs=1e-9)


def test_optimizer_lr_follows_its_iterations():
    # The schedule is driven by optimizer.iterations, which checkpoints save: a resumed run
    # continues at the same point of the schedule.
    opt = recipes.get("resnet18").build_optimizer(SPE)
    assert float(opt.learning_rate) == pytest.approx(0.1)
    opt.iterations.assign(30 * SPE)
    assert float(opt.learning_rate) == pytest.approx(1e-3, rel=1e-5)


def test_learning_rate_override_keeps_the_schedule_shape():
    opt = recipes.get("alexnet_bwn").build_optimizer(SPE, learning_rate=0.05)
    opt.iterations.assign(4 * SPE)
    assert float(opt.learning_rate) == pytest.approx(5e-4, rel=1e-5)


def test_default_recipes_per_model():
    assert recipes.default_for("xnor_small").name == "fashion_mnist"
    assert recipes.default_for("xnor_alexnet").name == "alexnet_xnor"
    assert recipes.default_for("bwn_alexnet").name == "alexnet_bwn"
    assert recipes.default_for("float_alexnet").name == "alexnet_bwn"
    assert recipes.default_for("xnor_resnet18").name == "resnet18"


def test_errors():
    with pytest.raises(ValueError, match="alexnet_bwn"):
        recipes.get("imagenet_fast")
    with pytest.raises(ValueError, match="steps_per_epoch"):
        recipes.get("resnet18").learning_rate_schedule(0)
