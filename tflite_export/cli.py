"""Command line: ``python -m keras_xnor.tflite_export MODEL.keras OUT.tflite``."""

import argparse
import os
import sys


def run(argv=None, prog="keras-xnor-export"):
    """Entry point (console script ``keras-xnor-export``). Returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a Keras model with keras-xnor layers to a .tflite whose binary "
        "layers are bitpacked custom ops (run it with keras_xnor.tflite_export.Interpreter).",
    )
    parser.add_argument("model", help="input Keras model (.keras)")
    parser.add_argument("output", help="output .tflite path")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="fixed batch size (default: dynamic, resize at run time)")
    parser.add_argument("--no_fold_batch_norm", action="store_true",
                        help="keep BatchNorm layers that follow binary layers as builtins")
    parser.add_argument("--float16_weights", action="store_true",
                        help="store the float layers' weights as float16 (smaller file)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.model):
        parser.error("model %r is a directory; give a .keras file" % args.model)
    if not os.path.isfile(args.model):
        parser.error("model file %r does not exist" % args.model)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    # The output path, checked before the (long) conversion.
    if not args.output:
        parser.error("the output path is empty")
    if os.path.isdir(args.output) or args.output.endswith(os.sep):
        parser.error("output %r is a directory; give a file path" % args.output)
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        parser.error("the output's directory %r does not exist" % directory)
    if not os.access(directory, os.W_OK):
        parser.error("the output's directory %r is not writable" % directory)

    import keras  # noqa: PLC0415 (slow imports after argument checks)

    import keras_xnor  # noqa: F401,PLC0415 (registers the layers for deserialization)
    from keras_xnor.tflite_export import convert  # noqa: PLC0415

    try:
        model = keras.saving.load_model(args.model)
    except Exception as error:  # noqa: BLE001 (report any load failure plainly)
        print("error: could not load %s: %s" % (args.model, error), file=sys.stderr)
        return 2
    try:
        data = convert(model, batch_size=args.batch_size,
                       fold_batch_norm=not args.no_fold_batch_norm,
                       float_weights="float16" if args.float16_weights else "float32")
    except (ValueError, TypeError, RuntimeError) as error:  # convert()'s refusals
        print("error: could not convert %s: %s" % (args.model, error), file=sys.stderr)
        return 2
    try:
        with open(args.output, "wb") as f:
            f.write(data)
    except OSError as error:
        print("error: could not write %s: %s" % (args.output, error), file=sys.stderr)
        return 2
    print("wrote %s (%d bytes)" % (args.output, len(data)))
    return 0


if __name__ == "__main__":
    sys.exit(run())
