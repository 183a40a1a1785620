# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench bench-ntkd clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first, so nothing below can pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,slmsuite]'
	touch $(STAMP)

install: $(STAMP)

# The hardware-in-the-loop job on the simulated bench (examples/run_sim.yaml): train, export, fabricate,
# calibrate, capture, fine-tune, report into out/demo (about 7 min on 2 idle cores, offline; rerun resumes).
# The simulator alone: $(BIN)/python examples/simulator_demo.py --out out/simulator_demo
demo: $(STAMP)
	$(BIN)/python -m hil.cli -v run examples/run_sim.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

bench: $(STAMP)
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/capture.py

bench-ntkd: $(STAMP)
	$(BIN)/python benchmarks/ntkd.py --long --tune --tasks classification --out benchmarks/results/ntkd_tuned_long.json
	$(BIN)/python benchmarks/ntkd.py --long --tune --tasks segmentation --out benchmarks/results/ntkd_tuned_segmentation.json

clean:
	rm -rf $(VENV) out build *.egg-info
