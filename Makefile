# The two commands of the README's quick start: `make demo` and `make test`.
.PHONY: setup demo test board

setup:
	bash scripts/setup.sh runtime,train,dev

demo: setup
	.venv/bin/edgekit demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider

# What a board installs: the runtime extra only, no TensorFlow.
board:
	bash scripts/setup.sh runtime
