"""FedAvg aggregation throughput against the machine's measured memory bandwidth, in one run.

Builds ``--clients`` updates of a model with ``--params`` float32 parameters (split into layers of
realistic sizes), then times, best of ``--repeat``:

- **memcpy** — copying one model-sized array into another with NumPy, on as many threads as the
  aggregation uses: the memory bandwidth this process can get (bytes read + bytes written per second);
- **fedavg** — :func:`flip_fl.aggregate.fedavg` over the updates, counted as the bytes it must move at
  the least (every update read once, the result written once) per second, writing into a model's worth
  of arrays written before (``out=``), as FLIP's ServerApp does from round 2 on (the ratio reported);
- **fedavg, new result** — the same into newly allocated arrays, as in round 1: the kernel's first touch
  of every page of the result is then part of the time (memcpy's destination is touched beforehand);
- **naive** — the textbook NumPy expression ``sum(w * x for ...)`` per layer, for comparison.

The arrays are far larger than the CPU caches (the default model is 1 GiB per update), so caches do
not flatter either side. Prints ``name: value unit (ratio vs memcpy)`` and writes bench/results/agg.json
(``ratio`` = fedavg / memcpy; the target is at least 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flip_fl.aggregate import Update, fedavg

RESULTS = Path(__file__).resolve().parent / "results" / "agg.json"
GB = 1e9


def best_of(repeat: int, run: Callable[[], object]) -> float:
    """The fastest of ``repeat`` runs, in seconds (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def model_layers(params: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A model's arrays: a few large weight matrices and many small biases and norms, ``params`` in all."""
    small = [rng.standard_normal(n).astype(np.float32) for n in (64, 128, 256, 512) * 8]
    remaining = params - sum(a.size for a in small)
    large_sizes = [remaining // 2, remaining // 4, remaining // 8]
    large_sizes.append(remaining - sum(large_sizes))
    return [rng.standard_normal(n, dtype=np.float32) for n in large_sizes] + small


def parallel_copy(dst: np.ndarray, src: np.ndarray, pool: ThreadPoolExecutor, threads: int) -> None:
    step = -(-src.size // threads)
    list(pool.map(lambda lo: np.copyto(dst[lo : lo + step], src[lo : lo + step]), range(0, src.size, step)))


def copy_seconds(params: int, threads: int, repeat: int) -> float:
    """Best time to copy ``params`` float32 values into another array on ``threads`` threads."""
    src = np.ones(params, dtype=np.float32)
    dst = np.zeros_like(src)  # written once, so that no page is first touched while timed
    with ThreadPoolExecutor(threads) as pool:
        return best_of(repeat, lambda: parallel_copy(dst, src, pool, threads))


def naive(updates: list[Update]) -> list[np.ndarray]:
    total = sum(u.weight for u in updates)
    return [
        sum((u.weight / total) * u.arrays[j] for u in updates)  # type: ignore[misc]
        for j in range(len(updates[0].arrays))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--params", type=int, default=1 << 28, help="float32 parameters per update (default 256 Mi)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if args.params < 100_000 or args.clients < 1 or args.threads < 1 or args.repeat < 1:
        sys.exit("--params must be at least 100000; --clients, --threads and --repeat at least 1")

    rng = np.random.default_rng(0)
    updates = [Update(model_layers(args.params, rng), weight) for weight in rng.integers(100, 1000, args.clients)]
    model_bytes = sum(a.nbytes for a in updates[0].arrays)
    print(
        f"{args.clients} updates of {model_bytes / GB:.2f} GB ({args.params:,} float32 parameters), "
        f"{args.threads} threads, best of {args.repeat}",
        flush=True,
    )

    memcpy = 2 * model_bytes / copy_seconds(args.params, args.threads, args.repeat) / GB

    moved = (args.clients + 1) * model_bytes  # every update read once, the result written once
    spare = fedavg(updates, threads=args.threads)  # a model's worth of arrays, written once
    ours_s = best_of(args.repeat, lambda: fedavg(updates, threads=args.threads, out=spare))
    spare.clear()
    fresh_s = best_of(args.repeat, lambda: fedavg(updates, threads=args.threads))
    naive_s = best_of(max(1, args.repeat // 2), lambda: naive(updates))
    ours, fresh, plain = moved / ours_s / GB, moved / fresh_s / GB, moved / naive_s / GB

    print(f"memcpy: {memcpy:.2f} GB/s (1.00x vs memcpy)")
    print(f"fedavg: {ours:.2f} GB/s ({ours / memcpy:.2f}x vs memcpy; target 0.5x) in {ours_s * 1000:.0f} ms")
    print(
        f"fedavg, new result: {fresh:.2f} GB/s ({fresh / memcpy:.2f}x vs memcpy; first touch of the result's "
        f"pages included) in {fresh_s * 1000:.0f} ms"
    )
    print(f"naive numpy: {plain:.2f} GB/s ({plain / memcpy:.2f}x vs memcpy) in {naive_s * 1000:.0f} ms")
    out = {
        "params": args.params,
        "clients": args.clients,
        "threads": args.threads,
        "update_gb": round(model_bytes / GB, 3),
        "agg_gb_per_s": round(ours, 2),
        "memcpy_gb_per_s": round(memcpy, 2),
        "ratio": round(ours / memcpy, 3),
        "agg_s": round(ours_s, 4),
        "agg_new_result_gb_per_s": round(fresh, 2),
        "agg_new_result_ratio": round(fresh / memcpy, 3),
        "naive_gb_per_s": round(plain, 2),
        "naive_ratio": round(plain / memcpy, 3),
        "machine": {"cpus": os.cpu_count(), "numpy": np.__version__, "python": sys.version.split()[0]},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
