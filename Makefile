# keras-xnor: `make demo` (the main job) and `make test`. Both work from a fresh clone on a
# fresh Debian machine as root: they create .venv, install the package editable (which builds
# the native ops), and install the Fashion-MNIST Debian package when it is missing.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CXX ?= g++
CXXFLAGS := -std=c++17 -O2 -Wall -Wno-unused-function -I. -pthread
AVX2_FLAGS := -mavx2 -mfma -mpopcnt
AVX512_FLAGS := -mavx512f -mavx512vpopcntdq

CORE_SRCS := $(filter-out %_test.cc,$(wildcard custom_ops/core/*.cc))
CORE_TESTS := $(wildcard custom_ops/core/tests/*_test.cc)
NATIVE_SRCS := $(wildcard custom_ops/*/*.cc custom_ops/*/*.h)
CPP_OBJ := build/cpp
CORE_OBJS := $(patsubst %.cc,$(CPP_OBJ)/%.o,$(CORE_SRCS))
TEST_BINS := $(patsubst custom_ops/core/tests/%.cc,$(CPP_OBJ)/tests/%,$(CORE_TESTS))

.PHONY: demo test venv data ops cpp-test cpp-sanitize-test sanitize-libs sanitize-test py-test bazel-test bench clean
# Keep the core objects between runs (they are intermediates of the test binaries).
.SECONDARY:

demo: venv data ops
	$(PY) -m keras_xnor.training.demo --output_dir=out/demo

test: venv data ops cpp-test cpp-sanitize-test sanitize-test py-test bazel-test

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .
	touch $@

# The Fashion-MNIST IDX files come from Debian (no download at run time).
data:
	@dpkg -s dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist)

# Rebuilds the TF op library and the TFLite delegate in place when a C++ file changed.
ops: build/.ops-built

build/.ops-built: $(NATIVE_SRCS) setup.py $(VENV)/.installed
	@mkdir -p build
	flock build/ops.lock $(PY) setup.py -q build_ext --inplace
	touch $@

# C++ tests of the framework-neutral core (no TF, no TFLite).
# The conv test runs twice: on AVX-512 CPUs the second run (KERAS_XNOR_AVX512=0) covers the
# AVX2 drivers with prepared filters, which the AVX-512 driver replaces by default.
cpp-test: $(TEST_BINS)
	@set -e; for t in $(TEST_BINS); do echo "== $$t"; $$t; done
	@echo "== KERAS_XNOR_AVX512=0 $(CPP_OBJ)/tests/xnor_conv2d_test"
	@KERAS_XNOR_AVX512=0 $(CPP_OBJ)/tests/xnor_conv2d_test

$(CPP_OBJ)/%_avx2.o: %_avx2.cc $(wildcard custom_ops/core/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(CPP_OBJ)/%_avx512.o: %_avx512.cc $(wildcard custom_ops/core/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(CPP_OBJ)/%.o: %.cc $(wildcard custom_ops/core/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(CPP_OBJ)/tests/%: custom_ops/core/tests/%.cc $(CORE_OBJS) $(wildcard custom_ops/core/*.h) $(wildcard custom_ops/core/tests/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) $< $(CORE_OBJS) -o $@

# The same C++ tests built with AddressSanitizer and UndefinedBehaviorSanitizer (-O1, any
# finding fails the run), on the core objects of the sanitized libraries below.
SAN_BASE := -std=c++17 -O1 -g -fPIC -fno-omit-frame-pointer -I. -pthread
SAN_FLAGS := $(SAN_BASE) -Wall -Wno-unused-function -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined
cpp-sanitize-test:
	$(MAKE) -j2 --no-print-directory cpp-test CPP_OBJ=$(SAN_LIB)/obj CXXFLAGS="$(SAN_FLAGS)"

# Both native libraries built with sanitizers, run by their pytest suites inside Python with
# the sanitizer runtimes preloaded: the TFLite delegate (core and delegate under ASan and UBSan)
# and the TF op library (its TF adapter under ASan only: TF's headers do not compile with
# -fsanitize=undefined under this g++; the core objects are the delegate's). The memory-flat
# delegate test is left out: ASan's quarantine holds freed memory. (--capture=sys: a finding
# aborts the process, and its report goes to the real stderr, not to a pytest capture.)
SAN_LIB := build/sanitize
SAN_CORE_OBJS := $(patsubst %.cc,$(SAN_LIB)/obj/%.o,$(CORE_SRCS))
SAN_DELEGATE_OBJS := $(patsubst %.cc,$(SAN_LIB)/obj/%.o,$(wildcard custom_ops/tflite/*.cc))
SAN_TF_OBJS := $(patsubst %.cc,$(SAN_LIB)/obj/%.o,$(wildcard custom_ops/tf/*.cc))
SAN_PRELOAD = $(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libubsan.so)
SAN_TF_FLAGS := $(SAN_BASE) -w -fsanitize=address

# TF's compile flags (with the version define the loader checks) and link flags, read once.
$(SAN_LIB)/tf.flags: $(VENV)/.installed
	@mkdir -p $(dir $@)
	$(PY) -c "import tensorflow as tf; print('-DKERAS_XNOR_TF_VERSION=\"%s\"' % tf.__version__, \
	  *tf.sysconfig.get_compile_flags()); print(*tf.sysconfig.get_link_flags())" > $@

$(SAN_LIB)/obj/custom_ops/tf/%.o: custom_ops/tf/%.cc $(wildcard custom_ops/*/*.h) $(SAN_LIB)/tf.flags
	@mkdir -p $(dir $@)
	$(CXX) $(SAN_TF_FLAGS) $$(head -n 1 $(SAN_LIB)/tf.flags) -c $< -o $@

$(SAN_LIB)/obj/%.o: %.cc $(wildcard custom_ops/*/*.h)
	@mkdir -p $(dir $@)
	$(CXX) $(SAN_FLAGS) $(if $(findstring _avx2.cc,$<),$(AVX2_FLAGS)) \
	  $(if $(findstring _avx512.cc,$<),$(AVX512_FLAGS)) -c $< -o $@

$(SAN_LIB)/_keras_xnor_delegate.so: $(SAN_CORE_OBJS) $(SAN_DELEGATE_OBJS)
	$(CXX) -shared -fsanitize=address,undefined $^ -o $@ -pthread

$(SAN_LIB)/_keras_xnor_ops.so: $(SAN_CORE_OBJS) $(SAN_TF_OBJS) $(SAN_LIB)/tf.flags
	$(CXX) -shared -fsanitize=address,undefined $(filter %.o,$^) -o $@ -pthread \
	  $$(tail -n 1 $(SAN_LIB)/tf.flags)

sanitize-libs: $(SAN_LIB)/_keras_xnor_delegate.so $(SAN_LIB)/_keras_xnor_ops.so

sanitize-test: venv
	$(MAKE) -j2 --no-print-directory sanitize-libs
	KERAS_XNOR_LIBRARY_DIR=$(SAN_LIB) LD_PRELOAD="$(SAN_PRELOAD)" \
	  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(PY) -m pytest -q -p no:cacheprovider --capture=sys tests/test_ops.py tests/test_ops_threads.py \
	  tests/test_tflite_delegate.py tests/test_tflite_export.py tests/test_tflite_contract.py \
	  --deselect tests/test_tflite_delegate.py::test_create_invoke_destroy_cycles_keep_memory_flat

py-test:
	$(PY) -m pytest -q tests

# The Bazel build (BUILD, WORKSPACE) with Debian's Bazel 4 and no network: bazel/offline/ stands
# in for the rule repositories Bazel would download, Debian packages give rules_java and
# platforms. Builds every target and runs the C++ tests, then the Python tests of the TF op and
# the delegate on the libraries Bazel built (KERAS_XNOR_LIBRARY_DIR).
BAZEL_DEBS := bazel-bootstrap bazel-rules-java bazel-platforms
BAZEL := bazel --batch --output_user_root=$(CURDIR)/build/bazel-root
BAZEL_FLAGS := --spawn_strategy=local --symlink_prefix=build/bazel- --test_output=errors \
  --repo_env=PYTHON_BIN_PATH=$(CURDIR)/$(PY) \
  --override_repository=rules_cc=$(CURDIR)/bazel/offline/rules_cc \
  --override_repository=remote_coverage_tools=$(CURDIR)/bazel/offline/remote_coverage_tools \
  --override_repository=rules_java=/usr/share/bazel/rules/java \
  --override_repository=platforms=/usr/share/bazel/platforms

bazel-test: venv
	@dpkg -s $(BAZEL_DEBS) >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BAZEL_DEBS))
	$(BAZEL) test $(BAZEL_FLAGS) //:all
	KERAS_XNOR_LIBRARY_DIR=$(CURDIR)/build/bazel-bin $(PY) -m pytest -q tests/test_build.py \
	  tests/test_ops.py tests/test_ops_threads.py tests/test_tflite_delegate.py

bench: venv ops
	$(PY) benchmarks/bench_conv.py --retries 3 --json build/bench_conv.json
	$(PY) benchmarks/bench_tflite.py --json build/bench_tflite.json
	$(PY) benchmarks/bench_keras.py --json build/bench_keras.json

clean:
	chmod -R u+w build 2>/dev/null || true  # Bazel's outputs are read-only
	rm -rf build keras_xnor/_ops/*.so bazel-out
