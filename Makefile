# Both targets set everything up from nothing but python3: a virtual environment in .venv with
# the package and its extras installed in one resolve (a separate install would pull numpy 2,
# which mxnet 1.9.1 cannot import).
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test clean

demo: $(INSTALLED)
	$(VENV)/bin/python examples/digits_maxnorm.py

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test,demo]'
	touch $(INSTALLED)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
