"""Inference benchmark: throughput per batch size, single-image latency, peak memory.

Plain Python, no database: the model comes from a `train_model` output folder
(its model.json). Run from the repository root:

    .venv/bin/python -m bench.inference --model-dir mlcore/weights/pleura-resnet18-v1 --write

`--write` replaces this benchmark's section of docs/benchmarks.md (one section per
device type, between `<!-- bench:inference:DEVICE -->` markers). bench/pipeline.py
calls `load_engine` and `measure_throughput` to put raw batched throughput beside
its end-to-end figures in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from mlcore.engine import InferenceEngine, ModelSpec
from mlcore.preprocessing import load_grayscale_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_DIR = ROOT / "mlcore" / "weights" / "pleura-resnet18-v1"
# Real radiographs (224 x 224, as uploads of this data set arrive); cycled to fill batches.
DEFAULT_IMAGES = ROOT / "tests" / "fixtures" / "chest_xray_small"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
BATCH_SIZES = (1, 8, 32)
# Enough repetitions to steady the figure, few enough to finish in about 15 s on 2 CPU cores.
REPEATS = 5
LATENCY_RUNS = 20
WARMUP_CALLS = 3


def load_engine(model_dir: str | Path, device: str | None = None) -> InferenceEngine:
    """An engine for a `train_model` output folder, checked against the sha256 in its model.json."""
    model_dir = Path(model_dir)
    description = json.loads((model_dir / "model.json").read_text())
    spec = ModelSpec.from_description(model_dir, description)
    return InferenceEngine(spec, device=device)


def load_images(folder: str | Path = DEFAULT_IMAGES) -> list[np.ndarray]:
    """Decoded 8-bit grayscale radiographs from a folder (searched recursively)."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    if not paths:
        raise FileNotFoundError(f"no PNG/JPEG images under {folder}")
    return [load_grayscale_file(path) for path in paths]


def _synchronize(engine: InferenceEngine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def _run_batch(engine: InferenceEngine, batch: list[np.ndarray], with_heatmap: bool) -> None:
    if with_heatmap:
        engine.predict(batch)
    else:
        engine.logits(batch)
    _synchronize(engine)


def measure_throughput(
    engine: InferenceEngine,
    images: list[np.ndarray],
    batch_size: int,
    *,
    with_heatmap: bool = False,
    repeats: int = REPEATS,
) -> dict:
    """Images per second for batches of `batch_size` (preprocessing included), after one warm-up batch.

    with_heatmap=False times `engine.logits` (forward only); True times `engine.predict`,
    Grad-CAM and the overlay PNGs included, which is what the prediction pipeline runs.
    Each repeat takes the next `batch_size` images (cycling), as a worker meets new
    images in every batch. Two figures: the best batch (what the hardware can do at its
    fastest moment) and the sustained rate, all images over all the time, which is the
    one to set beside a throughput measured over a run: on a shared VM the best batch
    runs a fifth faster than the average one.
    """
    batches = _cycled_batches(images, batch_size, repeats)
    _run_batch(engine, batches[0], with_heatmap)
    seconds = _batch_seconds(engine, batches, with_heatmap)
    return {
        "batch_size": batch_size,
        "with_heatmap": with_heatmap,
        "images_per_second": round(batch_size / min(seconds), 2),
        "sustained_images_per_second": round(batch_size * repeats / sum(seconds), 2),
        "median_batch_ms": round(statistics.median(seconds) * 1000, 1),
        "repeats": repeats,
    }


def _cycled_batches(images: list[np.ndarray], batch_size: int, repeats: int) -> list[list[np.ndarray]]:
    """`repeats` batches, each of the next `batch_size` images (cycling)."""
    return [
        [images[(start + i) % len(images)] for i in range(batch_size)]
        for start in range(0, repeats * batch_size, batch_size)
    ]


def _batch_seconds(engine: InferenceEngine, batches: list, with_heatmap: bool) -> list[float]:
    seconds = []
    for batch in batches:
        started = time.perf_counter()
        _run_batch(engine, batch, with_heatmap)
        seconds.append(time.perf_counter() - started)
    return seconds


class MeasuringProcesses:
    """`measure_throughput` with heatmaps, in `processes` processes at once, as a Celery
    worker of that many pool processes runs the model: each process floats over `cpus`
    with an equal share of them as torch threads, holds its own engine (a CUDA context
    each, sharing the GPU) and takes every `processes`-th batch of a measure.

    One process with all the threads is not the same machine: the Python around the
    model (preprocessing, the heatmaps' PNGs, kernel launches) runs in one thread per
    process, so N processes can beat it by far, and a pipeline compared with it would
    look better than the model can do.

    The processes start once and serve every `measure`: starting them costs a torch
    import and a CUDA context each, seconds that a run of several measures would pay
    again and again.
    """

    def __init__(self, spec: ModelSpec, *, processes: int, cpus: set[int], device: str | None = None):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a forked CUDA context is unusable
        self.processes, self.threads = processes, max(1, len(cpus) // processes)
        self._ready, self._results = context.Barrier(processes), context.Queue()
        self._tasks = [context.Queue() for _ in range(processes)]
        self._workers = [
            context.Process(
                target=_measuring_process,
                args=(spec, device, cpus, self.threads, tasks, self._ready, self._results),
                daemon=True,
            )
            for tasks in self._tasks
        ]
        for worker in self._workers:
            worker.start()

    def measure(self, images: list[np.ndarray], batch_size: int, repeats: int) -> dict:
        batches = _cycled_batches(images, batch_size, repeats)
        for number, tasks in enumerate(self._tasks):
            tasks.put(batches[number :: self.processes])
        shares = [self._next_share() for _ in self._tasks]
        errors = [share["error"] for share in shares if "error" in share]
        if errors:
            raise RuntimeError(f"a measuring process failed: {errors[0]}")
        return {**pool_process_shares(shares, batch_size), "processes": self.processes, "torch_threads": self.threads}

    def _next_share(self) -> dict:
        deadline = time.monotonic() + MEASURE_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return self._results.get(timeout=1)
            except queue.Empty:
                # A process that died before answering (killed, crashed at start) never will.
                dead = [worker.exitcode for worker in self._workers if worker.exitcode is not None]
                if dead:
                    self._ready.abort()  # release the others from the barrier, so that close() is quick
                    raise RuntimeError(f"a measuring process exited with code {dead[0]} before answering") from None
        raise RuntimeError(f"a measuring process did not answer within {MEASURE_TIMEOUT_S} s")

    def close(self) -> None:
        for tasks in self._tasks:
            tasks.put(None)
        for worker in self._workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
        for pipe in (*self._tasks, self._results):
            # Batches sent to a process that died stay unread; without this, this process
            # would wait at exit for its queue's thread to push them into a full pipe.
            pipe.cancel_join_thread()
            pipe.close()

    def __enter__(self) -> MeasuringProcesses:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# Loading a model and timing a few hundred images takes seconds; a process that has not
# answered in this time is stuck, and the benchmark says so instead of hanging.
MEASURE_TIMEOUT_S = 600


def _measuring_process(spec, device, cpus, threads, tasks, ready, results) -> None:
    """One process of `MeasuringProcesses`: load the model, then time each measure's
    batches from the moment every process is ready (its warm-up batch done)."""
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)
    engine = None
    while (batches := tasks.get()) is not None:
        try:
            if engine is None:
                engine = InferenceEngine(spec, device=device)
            results.put(_timed_share(engine, batches, ready))
        except BaseException as exc:
            ready.abort()  # the others stop waiting instead of hanging the benchmark
            results.put({"error": f"{type(exc).__name__}: {exc}"})
            raise


def _timed_share(engine: InferenceEngine, batches: list, ready) -> dict:
    _run_batch(engine, batches[0], with_heatmap=True)
    ready.wait()
    started = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the machine
    seconds = _batch_seconds(engine, batches, with_heatmap=True)
    return {
        "started": started,
        "finished": time.monotonic(),
        "batch_seconds": seconds,
        "device": engine.device.type,
        "device_description": describe_device(engine),
    }


def pool_process_shares(shares: list[dict], batch_size: int) -> dict:
    """Processes measured at once, as one figure. Sustained: every image over the time
    from the first process's start to the last one's finish. Best: each process at its
    fastest batch, all at the same moment."""
    batch_seconds = [seconds for share in shares for seconds in share["batch_seconds"]]
    span = max(share["finished"] for share in shares) - min(share["started"] for share in shares)
    return {
        "batch_size": batch_size,
        "with_heatmap": True,
        "images_per_second": round(sum(batch_size / min(share["batch_seconds"]) for share in shares), 2),
        "sustained_images_per_second": round(batch_size * len(batch_seconds) / span, 2),
        "median_batch_ms": round(statistics.median(batch_seconds) * 1000, 1),
        "repeats": len(batch_seconds),
        "device": shares[0]["device"],
        "device_description": shares[0]["device_description"],
    }


def measure_latency(
    engine: InferenceEngine, images: list[np.ndarray], *, runs: int = LATENCY_RUNS, with_heatmap: bool = True
) -> dict:
    """Single-image latency percentiles (one image per call, as an interactive upload is served)."""
    _run_batch(engine, [images[0]], with_heatmap)
    timings = []
    for i in range(runs):
        started = time.perf_counter()
        _run_batch(engine, [images[i % len(images)]], with_heatmap)
        timings.append((time.perf_counter() - started) * 1000)
    p50, p95 = np.percentile(timings, [50, 95])
    return {"runs": runs, "with_heatmap": with_heatmap, "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}


def peak_memory(engine: InferenceEngine) -> dict:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mib = rss_kib / 1024 / (1024 if sys.platform == "darwin" else 1)
    memory = {"peak_rss_mib": round(rss_mib, 1)}
    if engine.device.type == "cuda":
        memory["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated(engine.device) / 2**20, 1)
    return memory


def describe_device(engine: InferenceEngine) -> str:
    if engine.device.type == "cuda":
        return f"{torch.cuda.get_device_name(engine.device)} (CUDA, float16, channels_last)"
    threads = torch.get_num_threads()
    return f"CPU: {_cpu_name()} ({os.cpu_count()} cores), {threads} torch threads, float32, channels_last"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_benchmark(
    model_dir: str | Path = DEFAULT_MODEL_DIR,
    *,
    device: str | None = None,
    images_dir: str | Path = DEFAULT_IMAGES,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    repeats: int = REPEATS,
    latency_runs: int = LATENCY_RUNS,
) -> dict:
    engine = load_engine(model_dir, device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    images = load_images(images_dir)
    # The first calls after loading pay for thread pools and kernel selection: keep them out.
    for _ in range(WARMUP_CALLS):
        _run_batch(engine, images[:8], with_heatmap=False)
        _run_batch(engine, images[:8], with_heatmap=True)
    return {
        "model_version": engine.spec.name,
        "architecture": engine.spec.architecture,
        "image_size": engine.spec.image_size,
        "device": str(engine.device),
        "device_description": describe_device(engine),
        "torch": torch.__version__,
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "forward_only": [measure_throughput(engine, images, size, repeats=repeats) for size in batch_sizes],
        "with_gradcam": [
            measure_throughput(engine, images, size, with_heatmap=True, repeats=repeats) for size in batch_sizes
        ],
        "latency_single_image": measure_latency(engine, images, runs=latency_runs),
        "latency_single_image_forward_only": measure_latency(engine, images, runs=latency_runs, with_heatmap=False),
        "memory": peak_memory(engine),
    }


def render_section(result: dict, command: str) -> str:
    rows = zip(result["forward_only"], result["with_gradcam"], strict=True)
    latency, forward = result["latency_single_image"], result["latency_single_image_forward_only"]
    memory = ", ".join(f"{key} {value}" for key, value in result["memory"].items())
    best = max(result["with_gradcam"], key=lambda r: r["images_per_second"])
    lines = [
        f"### Inference on {result['device']}: {result['model_version']}",
        "",
        f"- Model: {result['architecture']}, input {result['image_size']} px; torch {result['torch']}.",
        f"- Device: {result['device_description']}.",
        f"- Measured {result['measured_at']} with:",
        "",
        "  ```",
        f"  {command}",
        "  ```",
        "",
        "| batch size | forward only (images/s) | with Grad-CAM + overlay PNG (images/s) "
        "| with Grad-CAM, sustained (images/s) |",
        "|---:|---:|---:|---:|",
        *[
            f"| {f['batch_size']} | {f['images_per_second']} | {g['images_per_second']} "
            f"| {g['sustained_images_per_second']} |"
            for f, g in rows
        ],
        "",
        f"- Single image, with Grad-CAM (what the pipeline runs): p50 {latency['p50_ms']} ms, "
        f"p95 {latency['p95_ms']} ms over {latency['runs']} runs.",
        f"- Single image, forward only: p50 {forward['p50_ms']} ms, p95 {forward['p95_ms']} ms.",
        f"- Best batch size with Grad-CAM here: {best['batch_size']} ({best['images_per_second']} images/s).",
        f"- Peak memory: {memory}.",
        "- Throughput is the best of the repeats after a warm-up batch, and sustained is all the "
        "repeats' images over all their time; preprocessing (resize, normalise) is included, decoding is not.",
    ]
    return "\n".join(lines)


def write_section(doc: Path, key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers; the rest of the file is untouched."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="a train_model output folder")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when present)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of PNG/JPEG radiographs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--latency-runs", type=int, default=LATENCY_RUNS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--write", nargs="?", const=DEFAULT_DOC, type=Path, default=None, help="update the doc")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    result = run_benchmark(
        options.model_dir,
        device=options.device,
        images_dir=options.images,
        batch_sizes=tuple(options.batch_sizes),
        repeats=options.repeats,
        latency_runs=options.latency_runs,
    )
    print(json.dumps(result, indent=2))
    if options.write is not None:
        command = ".venv/bin/python -m bench.inference " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(
            options.write, f"inference:{torch.device(result['device']).type}", render_section(result, command)
        )
    return result


if __name__ == "__main__":
    main()
