"""The first batch of each size against the next batch of that size: what a worker's
warm-up at every batch size (`InferenceEngine.warm_up`) saves its first studies.

Plain Python, no database. Each size is timed twice in a row, Grad-CAM and heatmaps
included, after one warm-up batch of one image (what a worker's warm-up ran before):

    .venv/bin/python -m bench.batch_shapes --device cuda --sizes 32 20 21 23 25 7 3

Prints JSON: per size, the first and second times in ms.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.inference import DEFAULT_IMAGES, DEFAULT_MODEL_DIR, _synchronize, load_engine, load_images
from mlcore.engine import use_cpu_threads


def first_and_next_ms(engine, images: list, sizes: list[int]) -> dict[int, dict[str, float]]:
    """Milliseconds of the first and second batch of each size, in the order given."""
    engine.predict(images[:1])
    timings = {}
    for size in sizes:
        batch = [images[i % len(images)] for i in range(size)]
        runs = []
        for _ in range(2):
            _synchronize(engine)
            started = time.perf_counter()
            engine.predict(batch)
            _synchronize(engine)
            runs.append(round((time.perf_counter() - started) * 1000, 1))
        timings[size] = {"first_ms": runs[0], "next_ms": runs[1]}
    return timings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when present)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 20, 21, 23, 25, 7, 3])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads, as a worker's pool process")
    args = parser.parse_args(argv)
    use_cpu_threads(args.threads)
    engine = load_engine(args.model_dir, args.device)
    result = {
        "device": engine.device.type,
        "torch_threads": args.threads,
        "batches": first_and_next_ms(engine, load_images(DEFAULT_IMAGES), args.sizes),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
