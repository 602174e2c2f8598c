# Quickstart: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_BUILD := $(VENV)/.op-built
SOURCES := $(shell find csrc -type f -not -path 'csrc/tests/*') CMakeLists.txt pyproject.toml
SANITIZE_DIR := build/sanitize

.PHONY: all venv build demo results test bench clean sanitize gpu-check gpu-check-dry gpu-wheels

all: build

$(STAMP_DEPS): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt
	touch $@

venv: $(STAMP_DEPS)

# Builds the kernels, the FFI handlers and the op against .venv's jaxlib and
# TensorFlow into keras_vae/ (CMake's tree in build/dev), and puts the
# checkout on .venv's path, so that tests run against the tree. Not `pip
# install -e`: its import hook would shadow the package copies that tests
# put on PYTHONPATH. flock: concurrent builds would race on the tree.
DEV_BUILD_DIR := build/dev
$(STAMP_BUILD): $(STAMP_DEPS) $(SOURCES)
	flock $(VENV)/.build.lock sh -c '$(VENV)/bin/cmake -S . -B $(DEV_BUILD_DIR) \
		-DPython_EXECUTABLE=$(CURDIR)/$(PY) -DKERAS_VAE_BUILD_TF_OP=ON && \
		$(VENV)/bin/cmake --build $(DEV_BUILD_DIR) --parallel'
	$(PIP) uninstall -q -y keras-vae 2>/dev/null || true
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/keras_vae_checkout.pth"
	touch $@

build: $(STAMP_BUILD)

# dist/keras_vae-*.whl: a manylinux wheel with the framework-free kernels, the
# XLA FFI handlers for JAX (against .venv's jaxlib headers) and the
# TensorFlow op for .venv's TensorFlow, checked by auditwheel. TensorFlow's
# own libraries, which the op links, come from the user's TensorFlow: they
# are not grafted into the wheel.
# Rebuilt only when the sources changed; each build is a fresh CMake tree
# (about five minutes on two cores, with CUDA).
WHEEL_DIR := dist
WHEEL_RAW_DIR := build/wheel-raw
WHEEL_STAMP := $(WHEEL_DIR)/.built
.PHONY: wheel install-test
$(WHEEL_STAMP): $(STAMP_DEPS) $(SOURCES) $(shell find keras_vae -name '*.py')
	rm -rf $(WHEEL_RAW_DIR) $(WHEEL_DIR)
	$(PIP) wheel --no-build-isolation --no-deps \
		-C cmake.define.KERAS_VAE_BUILD_TF_OP=ON -w $(WHEEL_RAW_DIR) .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair \
		--exclude libtensorflow_framework.so.2 --exclude libtensorflow_cc.so.2 \
		-w $(WHEEL_DIR) $(WHEEL_RAW_DIR)/*.whl
	$(VENV)/bin/auditwheel show $(WHEEL_DIR)/*.whl
	ls -l $(WHEEL_DIR)
	touch $@

wheel: $(WHEEL_STAMP)

# Installs the wheel into fresh virtual environments, one with JAX and one
# with PyTorch, neither with TensorFlow nor a compiler, and trains, evaluates
# and samples there from the command line (tests/test_install.py).
install-test: $(WHEEL_STAMP)
	KERAS_VAE_WHEEL=$$(ls $(WHEEL_DIR)/*.whl) $(PY) -m pytest tests/test_install.py -q -s

# Trains an IWAE (K=5) on scikit-learn's bundled digits, then evaluates it
# (ELBO, IWAE bounds, log-likelihood with 5000 importance samples) into
# runs/demo/metrics.json. About a minute on two cores.
DEMO_DIR := runs/demo
demo: build
	$(PY) -m keras_vae train --dataset digits --preset mlp --latent-dim 16 \
		--objective iwae -k 5 --epochs 300 --batch-size 100 \
		--lr-schedule cosine --verbose 2 --output $(DEMO_DIR)
	$(PY) -m keras_vae evaluate $(DEMO_DIR)

# RESULTS.md: Burda et al.'s comparison on Fashion-MNIST (dynamic
# binarization): the one-stochastic-layer `mlp` preset as VAE k=1, VAE k=50,
# IWAE k=50 and IWAE k=50 with DReG, and the two-stochastic-layer `mlp2`
# preset as VAE k=1 and IWAE k=50; the same number of epochs each, evaluated
# with 5000 importance samples. Needs the IDX files, e.g. from Debian's
# dataset-fashion-mnist package. A run is name:preset:objective:k:estimator.
# About 65 minutes on two quiet cores (RESULTS.md): 33 of training, 28 of
# the k=5000 log-likelihoods.
RESULTS_DIR := runs/results
RESULTS_EPOCHS := 10
RESULTS_RUNS := vae-k1:mlp:elbo:1:standard vae-k50:mlp:elbo:50:standard \
	iwae-k50:mlp:iwae:50:standard iwae-k50-dreg:mlp:iwae:50:dreg \
	vae2-k1:mlp2:elbo:1:standard iwae2-k50:mlp2:iwae:50:standard
results: build
	@echo "make results: six trainings and evaluations, about 65 minutes on two cores"
	set -e; start=$$(date +%s); for run in $(RESULTS_RUNS); do \
		set -- $$(echo $$run | tr : ' '); name=$$1; \
		$(PY) -m keras_vae train --dataset fashion_mnist --preset $$2 \
			--objective $$3 -k $$4 --gradient-estimator $$5 \
			--epochs $(RESULTS_EPOCHS) --batch-size 100 --seed 0 --verbose 2 \
			--output $(RESULTS_DIR)/$$name; \
		$(PY) -m keras_vae evaluate $(RESULTS_DIR)/$$name \
			--ll-samples 5000 --verbose 0 \
			--per-example $(RESULTS_DIR)/$$name/per_example.npz; \
	done; \
	echo "make results: trained and evaluated in $$(( ($$(date +%s) - start) / 60 )) minutes"
	$(PY) -m benchmarks.results_table $(RESULTS_DIR)

# The C++ suites, the GPU check's dry run and the install test, then the
# whole Python suite once per Keras backend. Tests marked tensorflow_only
# (TensorFlow machinery) and backend_independent (no Keras backend reached)
# run in TensorFlow's run alone; tests/conftest.py says which is which. Two
# pytest workers, a test file each, as the machine has two cores.
PYTEST := $(PY) -m pytest tests -q -n 2 --dist loadfile -p no:cacheprovider
test: build sanitize gpu-check-dry install-test
	KERAS_BACKEND=tensorflow $(PYTEST)
	KERAS_BACKEND=jax $(PYTEST)
	KERAS_BACKEND=torch $(PYTEST)

# The C++ tests, in a build of their own (no TensorFlow needed): the CPU
# kernels and the shape contract under AddressSanitizer and
# UndefinedBehaviorSanitizer, and the CUDA kernels run on the CPU by the SIMT
# emulation (csrc/tests/simt) plain, under ASan+UBSan and under
# ThreadSanitizer. One to three minutes on two cores, most of it compiling.
sanitize: $(STAMP_DEPS)
	$(VENV)/bin/cmake -S csrc/tests -B $(SANITIZE_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo
	$(VENV)/bin/cmake --build $(SANITIZE_DIR) -j 2
	$(VENV)/bin/ctest --test-dir $(SANITIZE_DIR) --output-on-failure --parallel 2

# On a lent GPU machine (no TensorFlow, no network; see the README's GPU
# section): builds _kernels for sm_90 without TensorFlow, runs the GPU tests
# with KERAS_VAE_REQUIRE_GPU=1, compute-sanitizer and the GPU benchmark, all
# into GPU_CHECK_OUT, in under seven minutes. Its python is the machine's.
GPU_CHECK_OUT ?= runs/gpu-check
GPU_WHEELS := build/gpu-wheels
gpu-check:
	$(PYTHON) -m benchmarks.gpu_check --out $(GPU_CHECK_OUT) --wheels $(GPU_WHEELS)

# What of gpu-check needs no GPU, here: arguments, the build's configuration,
# the GPU tests without TensorFlow (they skip), the sanitizer cases and the
# benchmark harness on the CPU at tiny sizes.
gpu-check-dry: build
	$(PY) -m benchmarks.gpu_check --dry-run --out build/gpu-check-dry --wheels $(GPU_WHEELS)

# The wheels gpu-check carries to a machine with Python 3.12 and no Keras:
# Keras and what it imports that such a machine may lack (gpu-check unpacks
# only those it lacks). About 9 MB, into an ignored folder.
gpu-wheels: $(STAMP_DEPS)
	$(PIP) download --only-binary=:all: --python-version 3.12 \
		--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
		--no-deps -d $(GPU_WHEELS) \
		keras==3.15.1 namex==0.1.0 optree==0.20.0 absl-py==2.5.1 rich==15.0.0 \
		markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0 h5py==3.14.0

# `make bench BENCH_ARGS=--quick` for the two-minute run.
bench: build
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf build dist keras_vae/*.so runs
