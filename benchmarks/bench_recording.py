"""Recording overhead and peak memory of `detox_utils.activations.record`.

Overhead: for each batch that ``record`` would form (texts sorted by length), the time of a bare forward
pass of the transformer body (``lm.model.base_model``: no hooks, no pooling, input pre-tokenized) and the
time of ``record`` called on that batch's texts (end to end: tokenization, batching, hook set-up, pooling,
copies to CPU), alternating which goes first so that the machine's load drift hits both alike. Their
summed ratio is the overhead (goal <= 1.03); calling ``record`` once per batch pays its per-call set-up
once per batch, so the ratio is conservative. ``record`` stops after the last MLP it needs and never runs
the final norm or the unembedding; the bare pass skips the unembedding too (a full ``*ForCausalLM``
forward would add it, which would flatter the ratio).

Peak memory: the process's resident set size sampled every 10 ms during the timed runs (model weights
and the [n_texts, n_layers, d_mlp] result included), and ``ru_maxrss`` for the whole run (model loading
included). Goal <= 4 GiB for 2,000 texts.

    .venv/bin/python benchmarks/bench_recording.py [--texts 2000] [--model gemma3-270m] [--threads 1]
"""
from __future__ import annotations

import argparse
import functools
import os
import resource
import threading
import time

import torch
from tqdm.auto import tqdm

from detox_utils import activations, data, models

GIB = 1024**3


class PeakRSS:
    """Samples this process's resident set size in a background thread while active."""

    def __init__(self, every: float = 0.01) -> None:
        self.every, self.peak = every, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000, help="number of texts (half toxic, half neutral)")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--site", default="post")
    parser.add_argument("--pooling", default="max")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lm = models.load(args.model)
    toxic, neutral = data.contrast_texts(args.texts // 2, args.texts - args.texts // 2)
    texts = toxic + neutral
    rss_loaded = PeakRSS().rss()
    batches = activations.batches(lm, texts, args.batch_size, args.max_length)  # record's own batching
    body = lm.model.base_model
    record = functools.partial(activations.record, lm, sites=(args.site,), pooling=args.pooling,
                               batch_size=args.batch_size, max_length=args.max_length, cache=False, progress=False)

    def bare(batch) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            body(**batch.model_inputs(lm.device))
        return time.perf_counter() - start

    def recorded(batch) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out = record([texts[i] for i in batch.index])[args.site]
        return time.perf_counter() - start, out

    bare(batches[-1]), recorded(batches[-1])  # warm-up outside the clock
    t_bare = t_record = 0.0
    rows = []
    with PeakRSS() as peak:
        for b, batch in enumerate(tqdm(batches, desc="bench", unit="batch")):
            if b % 2:  # alternate which goes first
                t_bare += bare(batch)
                dt, out = recorded(batch)
            else:
                dt, out = recorded(batch)
                t_bare += bare(batch)
            t_record += dt
            rows.append(out)
    result = torch.cat(rows)

    print(f"model {args.model} ({lm.n_layers} layers, d_mlp {lm.d_mlp}); {len(texts)} texts in {len(batches)} "
          f"batches of {args.batch_size}, site {args.site!r}, pooling {args.pooling!r}, max_length {args.max_length}; "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"result {tuple(result.shape)} {result.dtype}, {result.numel() * 4 / GIB:.2f} GiB")
    print(f"bare forward (base model): {t_bare:.1f} s; record: {t_record:.1f} s; "
          f"ratio {t_record / t_bare:.3f} (goal <= 1.03)")
    print(f"RSS after loading {rss_loaded / GIB:.2f} GiB; peak RSS during the timed runs {peak.peak / GIB:.2f} GiB "
          f"(goal <= 4 GiB); ru_maxrss of the whole run {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GiB")


if __name__ == "__main__":
    main()
