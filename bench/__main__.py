"""Run the benchmarks: ``python -m bench [name ...]`` (default: all).

Each ``bench/bench_<name>.py`` has ``main() -> dict``; it prints its own progress and
table, and returns its figures, written to ``bench-results/<name>.json``.
"""

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench

RESULTS = Path("bench-results")


def main(argv: list[str]) -> int:
    available = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )
    chosen = argv or available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available)}")
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in chosen:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        module = importlib.import_module(f"bench.bench_{name}")
        figures = module.main()
        figures["wall_seconds"] = round(time.monotonic() - started, 1)
        (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False))
        print(f"-> {RESULTS / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
