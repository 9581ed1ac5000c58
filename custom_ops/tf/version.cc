// Which TensorFlow this op library was compiled against. keras_xnor/ops.py reads it (via
// ctypes, before tf.load_op_library) and refuses to load a library built for another TF,
// whose C++ ABI would not match. setup.py passes -DKERAS_XNOR_TF_VERSION="<tf.__version__>".
#ifndef KERAS_XNOR_TF_VERSION
#define KERAS_XNOR_TF_VERSION "unknown"
#endif

// Also kept as a plain marker string in the binary, so the loader can name the version even
// when the library cannot be opened at all (e.g. undefined symbols of another TF).
extern "C" __attribute__((used, visibility("default"))) const char
    keras_xnor_built_tf_version_marker[] = "keras_xnor_built_tf_version=" KERAS_XNOR_TF_VERSION;

extern "C" __attribute__((visibility("default"))) const char* keras_xnor_built_tf_version() {
  return KERAS_XNOR_TF_VERSION;
}
