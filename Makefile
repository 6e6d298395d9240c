# The two commands of the README's quick start: `make demo` and `make test`.
.PHONY: setup demo test mobile pruning board board-check

setup:
	bash scripts/setup.sh runtime,train,dev,cluster

demo: setup
	.venv/bin/edgekit demo

# The mobile family (dwsep, mbconv, residual blocks at three widths) through the same stages as the demo, into
# ./mobile; not part of `make demo`, which must stay within its time budget.
mobile: setup
	.venv/bin/edgekit demo --family mobile --out mobile

# The demo's largest plain CNN, its ViP twin and their pruned children (L1 and ThiNet), into ./pruning.
pruning: setup
	.venv/bin/edgekit demo --family pruning --out pruning

# pytest: one worker per core (at most 4: each holds TensorFlow), each test file on one worker, so a module's
# fixtures are built once. On the 2-core AMD EPYC VM this took the suite from 9 min 56 s to 6 min 05 s.
test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache  # the contracts in pyproject.toml's [tool.importlinter]
	.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile

# What a board installs: the runtime extra only, no TensorFlow.
board:
	bash scripts/setup.sh runtime

# Prove the board install on aarch64 in an emulated Debian arm64 root (root, network, ~10 min
# the first time, a few minutes when the root is cached). Timings there are QEMU's, not a board's.
board-check: setup
	.venv/bin/python scripts/board_check.py
