"""``python -m keras_xnor.tflite_export MODEL.keras OUT.tflite``."""

import sys

from keras_xnor.tflite_export.cli import run

sys.exit(run(prog="python -m keras_xnor.tflite_export"))
