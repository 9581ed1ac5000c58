"""`tf_configure`: a repository holding the TensorFlow that Python imports, for a custom op.

Runs `python -c "import tensorflow"` (the interpreter named by the PYTHON_BIN_PATH environment
variable, else `python3` on PATH; pass `--repo_env=PYTHON_BIN_PATH=...` to pick one) and makes
a repository with
  :tf_header_lib              TensorFlow's headers, with the defines of
                              `tf.sysconfig.get_compile_flags()` (C++ ABI, Eigen alignment);
  :libtensorflow_framework    the framework library of `tf.sysconfig.get_link_flags()`;
  :tf_version                 defines KERAS_XNOR_TF_VERSION="<tf.__version__>", which the op
                              library records so that keras_xnor refuses to load it into
                              another TensorFlow.
The repository is re-made when PYTHON_BIN_PATH changes; after upgrading TensorFlow in the same
interpreter, run `bazel sync --configure` (or `bazel clean --expunge`).
"""

_PROBE = """
import tensorflow as tf
print("KX_TF " + tf.sysconfig.get_include())
print("KX_TF " + tf.sysconfig.get_lib())
print("KX_TF " + tf.__version__)
print("KX_TF " + " ".join(tf.sysconfig.get_compile_flags()))
print("KX_TF " + " ".join(tf.sysconfig.get_link_flags()))
"""

def _python(repository_ctx):
    name = repository_ctx.os.environ.get("PYTHON_BIN_PATH", "python3")
    if "/" in name:
        return name
    path = repository_ctx.which(name)
    if path == None:
        fail("tf_configure: no `%s` on PATH; set PYTHON_BIN_PATH to a Python with TensorFlow " % name +
             "(e.g. --repo_env=PYTHON_BIN_PATH=$(which python3))")
    return str(path)

def _quote(text):
    return "\"" + text.replace("\\", "\\\\").replace("\"", "\\\"") + "\""

def _tf_configure_impl(repository_ctx):
    python = _python(repository_ctx)
    result = repository_ctx.execute([python, "-c", _PROBE], quiet = True)
    if result.return_code != 0:
        fail("tf_configure: `%s` could not import tensorflow:\n%s" % (python, result.stderr))
    lines = [line[len("KX_TF "):] for line in result.stdout.splitlines() if line.startswith("KX_TF ")]
    if len(lines) != 5:
        fail("tf_configure: unexpected output from `%s`:\n%s" % (python, result.stdout))
    include_dir, lib_dir, version, compile_flags, link_flags = lines
    libraries = [flag[len("-l:"):] for flag in link_flags.split(" ") if flag.startswith("-l:")]
    if len(libraries) != 1:
        fail("tf_configure: expected one -l:<file> in TensorFlow's link flags, got: " + link_flags)
    library = libraries[0]
    defines = [flag[len("-D"):] for flag in compile_flags.split(" ") if flag.startswith("-D")]

    repository_ctx.symlink(include_dir, "include")
    repository_ctx.symlink(lib_dir + "/" + library, library)
    # Bourne-shell tokenized by Bazel: the escaped quotes reach the compiler as quotes.
    version_define = "KERAS_XNOR_TF_VERSION=\\\"%s\\\"" % version
    repository_ctx.file("BUILD", "\n".join([
        "# Made by keras-xnor's tf_configure from %s (TensorFlow %s)." % (python, version),
        "package(default_visibility = [\"//visibility:public\"])",
        "",
        "cc_library(",
        "    name = \"tf_header_lib\",",
        "    hdrs = glob([\"include/**\"]),",
        "    defines = [%s]," % ", ".join([_quote(d) for d in defines]),
        "    includes = [\"include\"],",
        ")",
        "",
        "cc_library(",
        "    name = \"libtensorflow_framework\",",
        "    srcs = [%s]," % _quote(library),
        ")",
        "",
        "cc_library(",
        "    name = \"tf_version\",",
        "    defines = [%s]," % _quote(version_define),
        ")",
        "",
    ]))

tf_configure = repository_rule(
    implementation = _tf_configure_impl,
    environ = ["PYTHON_BIN_PATH"],
    local = True,
)
