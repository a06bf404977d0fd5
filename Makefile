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
	$(BIN)/compress train --model resnet8 --data digits --epochs 15 --augment shift --out runs/demo/teacher.pt
	$(BIN)/compress distill --teacher runs/demo/teacher.pt --student mlp --model-arg hidden=128,128 \
		--data digits --temperature 4 --alpha 0.9 --epochs 30 --out runs/demo/student.pt
	$(BIN)/compress export runs/demo/teacher.pt --out runs/demo/teacher.onnx
	$(BIN)/compress export runs/demo/student.pt --out runs/demo/student.onnx
	$(BIN)/compress quantize runs/demo/student.onnx --out runs/demo/student.int8.onnx
	$(BIN)/compress bench runs/demo/teacher.onnx runs/demo/student.onnx runs/demo/student.int8.onnx \
		--batch-sizes 1,64 --threads 1 --report runs/demo/report

test: $(STAMP)
	$(BIN)/pytest -q

clean:
	rm -rf runs/demo
