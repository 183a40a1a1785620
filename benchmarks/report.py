"""The common ending of a benchmark script: a human table, the JSON result written atomically to
``benchmarks/results/NAME.json``, and the same JSON as the last line of standard output."""

from __future__ import annotations

import json
from pathlib import Path

from onn_core.files import atomic_write


def finish(rows, result: dict, out: Path, *, name_width: int = 28, value_width: int = 14) -> dict:
    """Print ``rows`` of ``(name, value, note)``, write ``result`` to ``out`` and print it as JSON."""
    for name, value, note in rows:
        print(f"{name:<{name_width}} {value!s:>{value_width}}   {note}")
    with atomic_write(out, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(json.dumps(result))
    return result
