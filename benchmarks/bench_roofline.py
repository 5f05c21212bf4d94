"""Roofline: achieved FLOP/s of generation and of activation recording against this machine's measured
fp32 matmul throughput for the shapes that matter, per packaged model, at 1 and 2 threads.

All figures of one model and thread count are measured back to back in one process, so contention from
other jobs on the machine hits numerator and denominator alike; the load average is printed at the
start and the end.

- *Peak*: ``torch.mm`` of ``[rows, d_model] x [d_model, d_mlp]`` (an MLP up-projection; rows = batch,
  a decoding step, and 8 x batch, a prefill) and of ``[batch, d_model] x [d_model, vocab]`` (the
  lm_head of a decoding step), fp32, best of a few repeats; the model's peak is the fastest of these.
- *Generation*: `detox_utils.generation.generate` with ``batch`` rows (prompts x samples). FLOPs are
  2 x weights x positions, counted by hooks: the body's ``nn.Linear`` weights x the tokens fed in
  (prompt tokens with padding, then one per row and step, finished rows included), plus the lm_head
  x the positions it is applied to (the last one per row and step); attention scores and sampling
  are work not credited.
- *Recording*: `detox_utils.activations.record` (all layers, ``post`` site, no cache) on contrast texts;
  FLOPs are 2 x the block weights it runs (it stops after the last MLP, before the final norm and the
  lm_head) x the tokens processed.
- *bf16*: the same up-projection matmul in bfloat16, as a speed ratio to fp32.

    .venv/bin/python benchmarks/bench_roofline.py [--models smollm2-135m gemma3-270m qwen2.5-coder-0.5b]
        [--threads 1 2] [--batch 64] [--new-tokens 8] [--texts 16]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from detox_utils import activations, data, generation, models  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load  # noqa: E402

MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


def matmul_flops(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of ``[m, k] @ [k, n]`` (each repeat runs for >= 0.2 s)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    torch.mm(a, b)  # warm-up
    start = time.perf_counter()
    torch.mm(a, b)
    per_call = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(0.2 / per_call))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * m * k * n / best


def linear_weights(module: torch.nn.Module) -> int:
    """Elements of every ``nn.Linear`` weight under ``module`` (a tied lm_head counts once, as a matmul)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


@contextlib.contextmanager
def count_positions(module: torch.nn.Module):
    """Counts the positions (rows) ``module`` is called on; yields a one-item list."""
    seen = [0]

    def hook(_module, args):
        seen[0] += args[0].shape[:-1].numel() if args[0].is_floating_point() else args[0].numel()

    handle = module.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def generation_flops(lm, body: int, head: int) -> int:
    """2 x weights x positions: the body (every Linear but the lm_head) on every token fed in, the lm_head
    on the positions it is applied to (generate computes logits of the last position only)."""
    head_weights = lm.model.get_output_embeddings().weight.numel()
    return 2 * ((linear_weights(lm.model) - head_weights) * body + head_weights * head)


def recorded_weights(lm) -> int:
    """Linear weights ``record`` runs for all layers at the ``post`` site: every block but the last
    layer's output projection (the forward stops at the last MLP's activation)."""
    blocks = lm.model.get_submodule(lm.arch.blocks)
    last_out = lm.model.get_submodule(lm.arch.output_projection(len(blocks) - 1))
    return linear_weights(blocks) - last_out.weight.numel()


def measure(lm, threads: int, args, prompts: list[str], texts: list[str]) -> dict[str, float]:
    torch.set_num_threads(threads)
    d_model, d_mlp = lm.d_model, lm.d_mlp
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    # rows: a decoding step (batch) and a prefill (batch x 8 prompt tokens); the faster counts
    peak_mlp = max(matmul_flops(m, d_model, d_mlp) for m in (args.batch, 8 * args.batch))
    peak_head = matmul_flops(args.batch, d_model, vocab, repeats=3)
    bf16 = matmul_flops(args.batch, d_model, d_mlp, torch.bfloat16, repeats=2)
    n_prompts = args.batch // 2
    kw = dict(n_samples=2, max_new_tokens=args.new_tokens, batch_size=args.batch, progress=False)
    generation.generate(lm, prompts[:2], n_samples=1, max_new_tokens=2, progress=False)  # warm-up
    with count_positions(lm.model.get_input_embeddings()) as body, \
            count_positions(lm.model.get_output_embeddings()) as head:
        start = time.perf_counter()
        generation.generate(lm, prompts[:n_prompts], **kw)
        gen_s = time.perf_counter() - start
    gen_flops = generation_flops(lm, body[0], head[0]) / gen_s
    with count_positions(lm.model.get_input_embeddings()) as seen:
        start = time.perf_counter()
        activations.record(lm, texts, sites=("post",), cache=False, progress=False, max_length=64)
        rec_s = time.perf_counter() - start
    rec_flops = 2 * recorded_weights(lm) * seen[0] / rec_s
    bf16_ref = matmul_flops(args.batch, d_model, d_mlp, repeats=2)
    return {"bf16_ref": bf16_ref, "peak_mlp": peak_mlp, "peak_head": peak_head, "bf16": bf16,
            "gen": gen_flops, "gen_s": gen_s, "rec": rec_flops, "rec_s": rec_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--batch", type=int, default=64, help="generation rows per batch (>= 64)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--texts", type=int, default=16, help="contrast texts recorded")
    args = parser.parse_args()
    if args.batch < 2 or args.batch % 2:
        parser.error(f"--batch {args.batch} is not allowed; allowed: an even integer >= 2")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads {args.threads} is not allowed; allowed: integers >= 1")

    print(f"start {load()}")
    prompts = data.prompts("rtp-challenging", n=args.batch // 2, seed=0)
    toxic, neutral = data.contrast_texts(args.texts // 2, args.texts - args.texts // 2, seed=0)
    texts = toxic + neutral
    print(f"generation: {args.batch // 2} prompts x 2 samples in one batch of {args.batch}, "
          f"<= {args.new_tokens} new tokens; recording: {len(texts)} texts, <= 64 tokens; fp32, CPU")
    print(f"{'model':<20} {'thr':>3} {'peak MLP':>9} {'peak head':>9} {'gen':>8} {'gen/peak':>8} "
          f"{'rec':>8} {'rec/peak':>8} {'bf16/fp32':>9}   (GFLOP/s; speed ratios)")
    for name in args.models:
        lm = models.load(name, device="cpu")
        for threads in args.threads:
            r = measure(lm, threads, args, prompts, texts)
            peak = max(r["peak_mlp"], r["peak_head"])
            print(f"{name:<20} {threads:>3} {r['peak_mlp'] / 1e9:>9.1f} {r['peak_head'] / 1e9:>9.1f} "
                  f"{r['gen'] / 1e9:>8.1f} {r['gen'] / peak:>8.2f} {r['rec'] / 1e9:>8.1f} "
                  f"{r['rec'] / peak:>8.2f} {r['bf16'] / r['bf16_ref']:>9.2f}", flush=True)
        del lm
    print("goal: generation / peak >= 0.5 for smollm2-135m at batch >= 64")
    print(f"end   {load()}")


if __name__ == "__main__":
    main()
