"""Time torch.nn and rnnkit side by side; the same as ``rnnkit bench``.

Run from the repository root, for example:

    .venv/bin/python benchmarks/bench_layers.py --output bench.json
    .venv/bin/python benchmarks/bench_layers.py --cells GRU --sizes 100,1,1,32

Options are those of ``rnnkit bench --help``.
"""

import sys

from rnnkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
