# The two commands a newcomer needs: `make demo` and `make test`. Each creates the virtual
# environment on first use, installs compress into it, and runs.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: its CPU wheel. Left to the resolver, pip would fetch the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# On the built-in digits data: train a teacher, distil a student, export both to ONNX (parity
# checked), quantize the student to int8, and benchmark all three against the teacher.
demo: $(STAMP)
	$(BIN)/compress run recipes/demo.toml

# -n auto: one pytest worker per core (pytest-xdist); `$(BIN)/pytest -m 'not slow'` for a quick pass.
test: $(STAMP)
	$(BIN)/pytest -q -n auto

clean:
	rm -rf runs/demo
