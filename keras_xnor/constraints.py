"""Weight constraints for binary layers.

The latent real-valued weights of a binary layer only matter through ``sign(W)`` (and ``alpha``),
and the STE passes no gradient where ``|W| > 1``: a weight that drifts past 1 can never come back.
Clipping the latent weights to ``[-1, 1]`` after every update (BinaryConnect, XNOR-Net training
practice) keeps them where the gradient lives. Binary layers use ``"weight_clip"`` by default.
"""

import keras

__all__ = ["WeightClip", "get"]


@keras.saving.register_keras_serializable(package="keras_xnor")
class WeightClip(keras.constraints.Constraint):
    """Clips weights to ``[-clip_value, clip_value]`` after each optimizer step.

    Args:
        clip_value: positive float, 1.0 by default (the STE range).
    """

    def __init__(self, clip_value=1.0):
        if not clip_value > 0:
            raise ValueError("WeightClip: clip_value must be positive, got %r." % (clip_value,))
        self.clip_value = float(clip_value)

    def __call__(self, w):
        return keras.ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


_ALIASES = {"weight_clip": WeightClip}


def get(identifier):
    """Like ``keras.constraints.get``, plus the name ``"weight_clip"``."""
    if isinstance(identifier, str) and identifier.strip().lower() in _ALIASES:
        return _ALIASES[identifier.strip().lower()]()
    return keras.constraints.get(identifier)
