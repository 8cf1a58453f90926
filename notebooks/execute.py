#!/usr/bin/env python3
"""Execute every notebook here in place, so that they are committed with their outputs (plots and
verdicts a reader sees without running anything). Prints each notebook's time.

    python3 notebooks/execute.py            # all of them
    python3 notebooks/execute.py 05 06      # those whose name starts with these prefixes
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def main(prefixes: list[str]) -> int:
    total = 0.0
    for path in sorted(HERE.glob("*.ipynb")):
        if prefixes and not any(path.name.startswith(p) for p in prefixes):
            continue
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(HERE)}}).execute()
        seconds = time.perf_counter() - start
        total += seconds
        nbformat.write(notebook, path)
        print(f"{path.name}: {seconds:.1f} s")
    print(f"total: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
