# Both targets set everything up from nothing but python3 (and a C++ compiler for Horovod): a
# virtual environment in .venv with the package, MXNet's CPU build (the cpu extra) and the other
# extras installed in one resolve (a separate install would pull numpy 2, which mxnet 1.9.1
# cannot import).
PYTHON ?= python3
VENV := .venv
PIP := $(VENV)/bin/python -m pip
INSTALLED := $(VENV)/.installed
WITH_HOROVOD := $(VENV)/.installed-horovod

# Horovod 0.28.1 builds against the installed mxnet: no build isolation, MXNet and Gloo only.
HOROVOD_ENV := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MPI=1

.PHONY: demo certified test benchmark docs wheel clean

demo: $(INSTALLED)
	$(VENV)/bin/python examples/digits_maxnorm.py

# The second demo: certified robustness of constrained networks (docs/certification.md).
certified: $(INSTALLED)
	$(VENV)/bin/python examples/certified.py

# Two pytest workers: about a third of the suite's time is spent starting processes (clusters,
# the demo, kernel builds) and waiting on them, which the other worker overlaps; on a 2-core
# machine kept busy by two other processes the suite takes 3.5 minutes instead of 5.
test: $(WITH_HOROVOD)
	$(VENV)/bin/python -m pytest -n 2 --dist worksteal

benchmark: $(INSTALLED)
	$(VENV)/bin/python -m benchmarks.enforcement
	$(VENV)/bin/python -m benchmarks.enforcement --optimizers --models paper-mlp resnet18 dense50 dcgan \
		--plot docs/benchmark-ratios.png
	$(VENV)/bin/python -m benchmarks.enforcement --monitoring --models paper-mlp resnet18
	$(VENV)/bin/python -m benchmarks.sparse_embedding
	$(VENV)/bin/python -m benchmarks.sparse_embedding --rows
	$(VENV)/bin/python -m benchmarks.certification
	$(VENV)/bin/python -m benchmarks.certification --projection
	$(VENV)/bin/python -m benchmarks.averaging
	$(VENV)/bin/python -m benchmarks.kernel_levels

# Rewrites docs/api.md from the docstrings (tests/test_docs.py checks that it is current), then
# builds the documentation site into site/ with warnings as errors (a test builds it too).
docs: $(INSTALLED)
	$(VENV)/bin/python docs/api_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# The sdist and a manylinux wheel carrying the fused kernel prebuilt for three x86-64 levels, in
# dist/ (README, "Installation"): python -m build compiles the kernel (setup.py), auditwheel
# checks the libraries against the manylinux policies and names the wheel. libgomp stays MXNet's
# own (it links the system's), so the wheel carries no second OpenMP runtime.
wheel: $(INSTALLED)
	rm -rf dist
	GLUON_CONSTRAINTS_PREBUILT=1 $(VENV)/bin/python -m build --outdir dist/linux
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair --exclude libgomp.so.1 \
		--wheel-dir dist dist/linux/*.whl
	mv dist/linux/*.tar.gz dist/ && rm -r dist/linux

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip 'setuptools>=77' wheel
	$(PIP) install --quiet -e '.[cpu,test,demo,tensorboard,docs]'
	touch $(INSTALLED)

$(WITH_HOROVOD): $(INSTALLED)
	$(HOROVOD_ENV) $(PIP) install --quiet --no-build-isolation -e '.[cpu,test,demo,tensorboard,docs,horovod]'
	touch $(WITH_HOROVOD)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis build dist
