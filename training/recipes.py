"""Training recipes: the XNOR-Net paper's ImageNet setups and one for the small nets.

A recipe fixes the optimizer, the learning-rate schedule (in epochs, turned into steps once
the steps per epoch are known), the batch size and the number of epochs. The schedule is a
function of ``optimizer.iterations``, which a full-model ``.keras`` checkpoint saves, so a
resumed run continues at the right point of the schedule.

=================  =========================================================================
recipe             setup
=================  =========================================================================
``alexnet_bwn``    Paper, BWN AlexNet: SGD, momentum 0.9, lr 0.1 multiplied by 0.01 every 4
                   epochs, batch 512, 16 epochs.
``alexnet_xnor``   Paper, XNOR AlexNet: Adam. The paper gives no learning rate, so: Adam's
                   standard lr 1e-3 (the 0.1 of the SGD setups diverges with Adam), the
                   same 16-epoch / batch-512 budget as BWN, and lr x0.1 at epochs 8 and 12:
                   binary nets keep improving while the lr drops, because small steps let
                   the latent weights settle around their sign flips.
``resnet18``       Paper, ResNet-18: SGD, momentum 0.9, lr 0.1 multiplied by 0.01 at epochs
                   30 and 40, batch 256, 58 epochs.
``fashion_mnist``  Small nets on Fashion-MNIST: Adam, lr 1e-3 with cosine decay to 0 over
                   the run, batch 128, 10 epochs (few-minute runs on 2 CPU cores).
=================  =========================================================================

The SGD recipes apply weight decay (weight_decay, 5e-4 for AlexNet, 1e-4 for ResNet-18,
the values of the original papers) to the full-precision kernels only: decay on the latent
weights of a binary layer pulls them towards 0 where the sign flips at random. It is the
Caffe / Torch weight decay those values are given for: ``weight_decay * w`` added to the
gradient, i.e. an L2 penalty of ``weight_decay / 2 * sum(w^2)`` (see
:func:`keras_xnor.models.alexnet`).
"""

import dataclasses

import keras


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One training setup.

    Attributes:
        name: the preset's name.
        optimizer: "sgd" or "adam".
        learning_rate: initial learning rate.
        schedule: "step" (multiply by ``decay_factor`` at each of ``decay_epochs``) or
            "cosine" (cosine decay to 0 over all epochs).
        decay_epochs: epochs (from 0) at which a step schedule multiplies the lr.
        decay_factor: the step schedule's multiplier.
        batch_size: global batch size.
        epochs: number of epochs.
        momentum: SGD momentum.
        weight_decay: weight decay of the full-precision kernels (None = off): their
            gradient gets ``weight_decay * w`` added (Caffe / Torch convention; an L2
            penalty of ``weight_decay / 2 * sum(w^2)``).
        description: one line for logs and --help.
    """

    name: str
    optimizer: str
    learning_rate: float
    schedule: str
    batch_size: int
    epochs: int
    decay_epochs: tuple = ()
    decay_factor: float = 1.0
    momentum: float = 0.0
    weight_decay: float = None
    description: str = ""

    def learning_rate_schedule(self, steps_per_epoch, epochs=None):
        """The lr as a function of the optimizer step.

        Args:
            steps_per_epoch: optimizer steps per epoch (> 0).
            epochs: total epochs of the run (default: the recipe's); only the cosine
                schedule depends on it.

        Returns:
            A ``keras.optimizers.schedules.LearningRateSchedule``.
        """
        steps_per_epoch = int(steps_per_epoch)
        if steps_per_epoch <= 0:
            raise ValueError("steps_per_epoch must be positive, got %r" % (steps_per_epoch,))
        epochs = int(epochs or self.epochs)
        if self.schedule == "step":
            # PiecewiseConstantDecay switches *after* a boundary (step > b), and the step
            # seen by the lr is the number of finished steps: the first step of epoch e
            # sees e * steps_per_epoch, so the boundary is one less.
            boundaries = [int(e) * steps_per_epoch - 1 for e in self.decay_epochs]
            values = [self.learning_rate * self.decay_factor ** i
                      for i in range(len(boundaries) + 1)]
            if not boundaries:
                return keras.optimizers.schedules.PiecewiseConstantDecay([10 ** 12],
                                                                         values * 2)
            return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
        if self.schedule == "cosine":
            return keras.optimizers.schedules.CosineDecay(
                self.learning_rate, decay_steps=max(1, epochs * steps_per_epoch), alpha=0.0)
        raise ValueError("unknown schedule %r" % (self.schedule,))

    def build_optimizer(self, steps_per_epoch, epochs=None, learning_rate=None):
        """The recipe's optimizer with its schedule.

        Args:
            steps_per_epoch, epochs: see :meth:`learning_rate_schedule`.
            learning_rate: overrides the initial lr (the schedule's shape is kept).
        """
        recipe = self if learning_rate is None else dataclasses.replace(
            self, learning_rate=float(learning_rate))
        lr = recipe.learning_rate_schedule(steps_per_epoch, epochs)
        if self.optimizer == "sgd":
            return keras.optimizers.SGD(learning_rate=lr, momentum=self.momentum)
        if self.optimizer == "adam":
            return keras.optimizers.Adam(learning_rate=lr)
        raise ValueError("unknown optimizer %r" % (self.optimizer,))


RECIPES = {
    "alexnet_bwn": Recipe(
        name="alexnet_bwn", optimizer="sgd", learning_rate=0.1, momentum=0.9,
        schedule="step", decay_epochs=(4, 8, 12), decay_factor=0.01, batch_size=512,
        epochs=16, weight_decay=5e-4,
        description="paper, BWN AlexNet: SGD m=0.9, lr 0.1 x0.01 every 4 epochs, "
                    "batch 512, 16 epochs"),
    "alexnet_xnor": Recipe(
        name="alexnet_xnor", optimizer="adam", learning_rate=1e-3, schedule="step",
        decay_epochs=(8, 12), decay_factor=0.1, batch_size=512, epochs=16,
        description="paper, XNOR AlexNet: Adam lr 1e-3 x0.1 at epochs 8 and 12, batch 512, "
                    "16 epochs"),
    "resnet18": Recipe(
        name="resnet18", optimizer="sgd", learning_rate=0.1, momentum=0.9, schedule="step",
        decay_epochs=(30, 40), decay_factor=0.01, batch_size=256, epochs=58,
        weight_decay=1e-4,
        description="paper, ResNet-18: SGD m=0.9, lr 0.1 x0.01 at epochs 30 and 40, "
                    "batch 256, 58 epochs"),
    "fashion_mnist": Recipe(
        name="fashion_mnist", optimizer="adam", learning_rate=1e-3, schedule="cosine",
        batch_size=128, epochs=10,
        description="small nets: Adam lr 1e-3 cosine to 0, batch 128, 10 epochs"),
}


def get(name):
    """The recipe called ``name``; ValueError listing the known ones otherwise."""
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError("unknown recipe %r; known recipes: %s"
                         % (name, ", ".join(sorted(RECIPES)))) from None


def default_for(model_name):
    """The recipe a model trains with unless told otherwise.

    small nets -> fashion_mnist; xnor AlexNet -> alexnet_xnor; other AlexNets (bwn, float)
    -> alexnet_bwn (the float AlexNet used the same SGD setup); ResNet-18s -> resnet18.
    """
    if "small" in model_name:
        return RECIPES["fashion_mnist"]
    if "alexnet" in model_name:
        return RECIPES["alexnet_xnor" if model_name.startswith("xnor") else "alexnet_bwn"]
    if "resnet18" in model_name:
        return RECIPES["resnet18"]
    raise ValueError("no default recipe for model %r; pass --recipe (one of %s)"
                     % (model_name, ", ".join(sorted(RECIPES))))
