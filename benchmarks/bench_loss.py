"""Benchmark: forward+backward of the unitune losses vs CLIP's cross-entropy.

    .venv/bin/python benchmarks/bench_loss.py            # CPU: N = 128, 512, 2048; CUDA too if present
    .venv/bin/python benchmarks/bench_loss.py --quick    # N = 128, 512, fewer repeats

The baseline is CLIP's symmetric cross-entropy on the same N x N matrix:
``(F.cross_entropy(γS, arange) + F.cross_entropy(γS.T, arange)) / 2``. Each row times
forward+backward of one loss, as a median over repeats interleaved with the baseline's in
the same process: every timed run of a case directly follows a timed run of the baseline,
ms is the median of the case's runs and ratio the median of the per-pair ratios (robust to
the load of a shared machine).

Two tables per device: the loss alone (S, an N x N float32 leaf, is given: the matmul is
NOT timed), and the whole step from two N x 512 L2-normalised embeddings (``S = a @ b.T``,
the matmul and its backward ARE timed, in the baseline too). Cases:
- unified <mode>: `unified_loss` with the default diagonal positives (no ids);
- ... ids unique: item ids passed as the training loop does, all distinct (same maths);
- ... ids x5: item ids repeated 5 times (5 captions per image in the batch).
γ = 20, m = 0.2, topk with k = 4 and k = 16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from unitune.losses import MINING_MODES, triplet_hn_loss, unified_loss, vlc_loss

DIM = 512
GAMMA = 20.0
MARGIN = 0.2
TOPKS = (4, 16)
CPU_SIZES = [128, 512, 2048]
CUDA_SIZES = [128, 512, 2048, 4096, 8192, 16384]


def clip_cross_entropy(sim):
    logits = sim * GAMMA
    labels = torch.arange(sim.shape[0], device=sim.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def make_cases(n, device):
    """name -> function(sim) -> scalar loss."""
    unique = torch.randperm(n, device=device)
    repeated = torch.arange(n, device=device) // 5
    cases = {"clip cross-entropy (baseline)": clip_cross_entropy,
             "vlc_loss": lambda s: vlc_loss(s, temperature=1 / GAMMA)["loss"],
             "triplet_hn_loss": lambda s: triplet_hn_loss(s, margin=MARGIN)["loss"]}
    modes = [("all", None), ("hardest", None)] + [("topk", k) for k in TOPKS]
    for mode, k in modes:
        name = mode if k is None else f"{mode} k={k}"
        for label, ids in (("", None), (" ids unique", unique), (" ids x5", repeated)):
            cases[f"unified {name}{label}"] = (
                lambda s, mode=mode, k=k, ids=ids: unified_loss(s, margin=MARGIN, gamma=GAMMA, mining=mode, topk=k,
                                                                row_ids=ids, col_ids=ids)["loss"])
    return cases


def step(loss_fn, inputs, with_matmul):
    """One forward+backward; inputs: (S,) or (a, b) leaves with requires_grad."""
    for t in inputs:
        t.grad = None
    sim = inputs[0] @ inputs[1].t() if with_matmul else inputs[0]
    loss_fn(sim).backward()


def time_cases(n, device, repeats, with_matmul):
    g = torch.Generator(device="cpu").manual_seed(n)
    a = F.normalize(torch.randn(n, DIM, generator=g), dim=1).to(device)
    b = F.normalize(torch.randn(n, DIM, generator=g), dim=1).to(device)
    if with_matmul:
        inputs = (a.requires_grad_(), b.requires_grad_())
    else:
        inputs = ((a @ b.t()).requires_grad_(),)
    cases = make_cases(n, device)
    baseline_name = next(iter(cases))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = {name: [] for name in cases}
    ratios = {name: [] for name in cases}
    for name, fn in cases.items():  # warm-up
        step(fn, inputs, with_matmul)

    def timed(fn):
        sync()
        start = time.perf_counter()
        step(fn, inputs, with_matmul)
        sync()
        return time.perf_counter() - start

    for _ in range(repeats):
        for name, fn in cases.items():
            if name == baseline_name:
                continue
            base = timed(cases[baseline_name])
            t = timed(fn)
            times[baseline_name].append(base)
            times[name].append(t)
            ratios[name].append(t / base)
    ratios[baseline_name] = [1.0]
    return {name: (statistics.median(t) * 1e3, statistics.median(ratios[name])) for name, t in times.items()}


def print_table(device, sizes, repeats, with_matmul):
    what = "S = a @ b.T, matmul INCLUDED" if with_matmul else "loss alone from a given S, matmul NOT included"
    print(f"\n{device.type}: forward+backward, {what}")
    header = f"{'case':<30} | {'N':>5} | {'ms':>9} | {'ratio':>5}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        for name, (ms, ratio) in time_cases(n, device, repeats(n), with_matmul).items():
            print(f"{name:<30} | {n:>5} | {ms:9.3f} | {ratio:5.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 128, 512 only (CUDA: up to 2048), fewer repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default: by N)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even if present")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def repeats(n):
        if args.repeats:
            return args.repeats
        base = 5 if args.quick else 15
        return base * 4 if n <= 512 else base

    devices = [(torch.device("cpu"), CPU_SIZES[:2] if args.quick else CPU_SIZES)]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append((torch.device("cuda"), CUDA_SIZES[:3] if args.quick else CUDA_SIZES))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32, D={DIM}, "
          f"gamma={GAMMA}, margin={MARGIN}; ms = median forward+backward; "
          f"ratio = median of time / paired baseline time (goal: <= 1.2 on CPU, <= 1.0 on CUDA)")
    for device, sizes in devices:
        for with_matmul in (False, True):
            print_table(device, sizes, repeats, with_matmul)
    return 0


if __name__ == "__main__":
    sys.exit(main())
