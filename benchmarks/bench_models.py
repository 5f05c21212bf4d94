"""Load time of each packaged model: cold (dequantize the GGUF and write the fp32 cache) vs cached.

Every load runs in a fresh Python process (so each pays the same imports and nothing stays in memory),
against a temporary ``DETOX_CACHE_DIR`` that starts empty: the first load is cold, the next ``--cached``
loads read the safetensors folder it wrote. Prints, per model, the wall time of each process, the time
`detox_utils.models.load` itself reported, and the ratio cold / cached (median), measured in one run.

    .venv/bin/python benchmarks/bench_models.py [--models smollm2-135m gemma3-270m] [--cached 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from detox_utils import models

CHILD = """
import json, sys
from detox_utils import models
lm = models.load(sys.argv[1])
print("RESULT " + json.dumps({k: lm.provenance[k] for k in ("load_seconds", "cache_hit")}))
"""


def timed_load(name: str, cache: str) -> tuple[float, dict]:
    """Wall seconds of a fresh process that loads ``name`` with ``cache`` as DETOX_CACHE_DIR."""
    env = {**os.environ, "DETOX_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, name], env=env, capture_output=True, text=True,
                          check=True)
    wall = time.perf_counter() - start
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return wall, json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=models.available(), choices=models.available())
    parser.add_argument("--cached", type=int, default=2, help="cached loads per model (median reported)")
    args = parser.parse_args()

    print(f"{'model':<14} {'cold wall s':>11} {'cold load s':>11} {'cached wall s':>13} "
          f"{'cached load s':>13} {'ratio wall':>10} {'ratio load':>10}")
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="bench_models_") as cache:
            cold_wall, cold = timed_load(name, cache)
            assert not cold["cache_hit"], "the temporary cache was not empty"
            cached = [timed_load(name, cache) for _ in range(args.cached)]
            assert all(c["cache_hit"] for _, c in cached)
        wall = statistics.median(w for w, _ in cached)
        load = statistics.median(c["load_seconds"] for _, c in cached)
        print(f"{name:<14} {cold_wall:>11.1f} {cold['load_seconds']:>11.1f} {wall:>13.1f} {load:>13.1f} "
              f"{cold_wall / wall:>10.1f} {cold['load_seconds'] / load:>10.1f}", flush=True)
    print("wall: whole process (Python + imports + load); load: models.load() alone. "
          f"CPU threads: {os.cpu_count()}; other load on the machine inflates all figures.")


if __name__ == "__main__":
    main()
