"""Benchmark: chunked retrieval metrics vs the bare similarity matmul.

    .venv/bin/python benchmarks/bench_eval.py            # 1K x 5K and 5K x 25K, D = 512
    .venv/bin/python benchmarks/bench_eval.py --quick    # 1K x 5K only, fewer repeats

Random L2-normalised float32 embeddings, 5 captions per item. For each size the table
gives the best-of-N time (the machine is shared: the minimum is the least disturbed run) of ``image_emb @ text_emb.T`` (the baseline), of
``retrieval_metrics_from_embeddings`` (chunked: similarities computed tile by tile and
counted, never the whole matrix) and of the full-matrix path (the matmul, then
``retrieval_metrics`` on the whole matrix as one tile), each as a ratio to the baseline
measured in the same process, interleaved so all see the same machine load.

Peak memory: the growth of the peak resident set size (Linux ``VmHWM``, reset to the
current RSS through ``/proc/self/clear_refs``) while one evaluation runs, each path in a
fresh subprocess, after the embeddings exist and a warm-up matmul has loaded the BLAS.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from unitune.eval import DEFAULT_CHUNK_SIZE, retrieval_metrics, retrieval_metrics_from_embeddings

DIM = 512
CAPTIONS_PER_ITEM = 5


def make_data(num_items: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """([num_items, D], [5 * num_items, D]) unit embeddings and [5 * num_items] caption_to_item.

    Filled 1024 rows at a time, so that making them leaves no high-water mark above
    the embeddings themselves (the memory figures measure what comes after)."""
    g = torch.Generator().manual_seed(seed)

    def unit_rows(n: int) -> torch.Tensor:
        out = torch.empty(n, DIM)
        for start in range(0, n, 1024):
            rows = out[start:start + 1024]
            rows.copy_(torch.nn.functional.normalize(torch.randn(rows.shape, generator=g), dim=1))
        return out

    images, texts = unit_rows(num_items), unit_rows(num_items * CAPTIONS_PER_ITEM)
    return images, texts, torch.arange(num_items).repeat_interleave(CAPTIONS_PER_ITEM)


def run_path(path: str, images: torch.Tensor, texts: torch.Tensor, c2i: torch.Tensor, chunk_size: int):
    if path == "matmul":
        return images @ texts.T
    if path == "chunked":
        return retrieval_metrics_from_embeddings(images, texts, c2i, chunk_size=chunk_size)
    if path == "full":
        return retrieval_metrics(images @ texts.T, c2i, chunk_size=images.shape[0])
    raise ValueError(f"unknown path {path!r}")


def time_paths(num_items: int, repeats: int, chunk_size: int) -> dict[str, float]:
    images, texts, c2i = make_data(num_items)
    times: dict[str, list[float]] = {"matmul": [], "chunked": [], "full": []}
    for path in times:  # warm-up
        run_path(path, images, texts, c2i, chunk_size)
    for _ in range(repeats):
        for path in times:
            start = time.perf_counter()
            run_path(path, images, texts, c2i, chunk_size)
            times[path].append(time.perf_counter() - start)
    return {path: min(t) for path, t in times.items()}


def peak_memory_mib(path: str, num_items: int, chunk_size: int) -> float:
    """Growth of max RSS (MiB) while ``path`` runs once, measured in a fresh subprocess."""
    cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
           "--_memory-child", path, str(num_items), str(chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def memory_child(path: str, num_items: int, chunk_size: int) -> None:
    images, texts, c2i = make_data(num_items)
    _ = images[:8] @ texts[:8].T  # load the BLAS before the baseline
    # Reset the peak RSS to the current RSS (Linux >= 4.0). ru_maxrss cannot serve: it
    # keeps the parent's high-water mark across fork and exec.
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run_path(path, images, texts, c2i, chunk_size)
    print((_status_kib("VmHWM") - before) / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1K x 5K only, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per path (default 5, quick 3)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--_memory-child", nargs=3, metavar=("PATH", "ITEMS", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_child:
        path, items, chunk = args._memory_child
        memory_child(path, int(items), int(chunk))
        return 0
    sizes = [1000] if args.quick else [1000, 5000]
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D={DIM}, float32, "
          f"{CAPTIONS_PER_ITEM} captions/item, chunk_size={args.chunk_size}, best of {repeats}")
    header = (f"{'items x captions':>17} | {'matmul s':>8} | {'chunked s':>9} | {'ratio':>5} | "
              f"{'full s':>7} | {'ratio':>5} | {'peak MiB chunked':>16} | {'peak MiB full':>13}")
    print(header)
    print("-" * len(header))
    for num_items in sizes:
        t = time_paths(num_items, repeats, args.chunk_size)
        mem_chunked = peak_memory_mib("chunked", num_items, args.chunk_size)
        mem_full = peak_memory_mib("full", num_items, args.chunk_size)
        shape = f"{num_items} x {num_items * CAPTIONS_PER_ITEM}"
        print(f"{shape:>17} | {t['matmul']:8.3f} | {t['chunked']:9.3f} | {t['chunked'] / t['matmul']:5.2f} | "
              f"{t['full']:7.3f} | {t['full'] / t['matmul']:5.2f} | {mem_chunked:16.1f} | {mem_full:13.1f}")
    print("ratio = time / matmul time (goal for chunked: <= 1.5); "
          "peak = peak-RSS growth during one evaluation (fresh process each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
