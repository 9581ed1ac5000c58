"""Training for keras-xnor (imported as ``keras_xnor.training``).

* :mod:`keras_xnor.training.datasets`: Fashion-MNIST (IDX files / Debian package / tfds) and
  ImageNet (tfds imagenet2012 with the paper's preprocessing) as tf.data pipelines.
* :mod:`keras_xnor.training.recipes`: the paper's optimizer/schedule presets.
* :mod:`keras_xnor.training.trainer`: :func:`~keras_xnor.training.trainer.train`, the loop
  with checkpoints, resume and tf.distribute strategies.
* ``python -m keras_xnor.training.train``: the CLI; ``python -m keras_xnor.training.demo``:
  float vs BWN vs XNOR on Fashion-MNIST, exported to TFLite and timed.

Nothing here is imported by ``keras_xnor`` itself.
"""
