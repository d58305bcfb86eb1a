"""Where a study's CPU time goes, measured in one process: the upload request, then the worker.

bench/pipeline.py gives end-to-end figures; this one explains them. On PostgreSQL (and
Redis as the broker, which nobody consumes here), in this process:

1. upload: N real radiographs posted to `POST /api/v1/studies/` through Django's test
   client with an integration key: the whole request (authentication, throttle, parsing,
   decoding, display PNG, storage, inserts, audit, queueing), CPU and wall ms per upload;
2. worker: one `predict_studies` call drains the N queued studies in batches, exactly
   as a Celery worker would; reports ms per study in the model (Grad-CAM and heatmap
   PNGs included) and in the rest (claims, decoding, reuse lookup, storing, audit)
   where the model was not running alongside it (the model has a thread of its own),
   and the model's share of the worker's time.

    .venv/bin/python -m bench.pipeline_costs --n 64 --cpus 1 --write

`--cpus` pins this process (and torch's threads) to those cores, as the split layout of
bench/pipeline.py pins the worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench import pipeline as end_to_end


class StageTimer:
    """Wall time spent in chosen functions of a module, summed over calls."""

    def __init__(self, module, names: list[str]):
        self.seconds = dict.fromkeys(names, 0.0)
        for name in names:
            setattr(module, name, self._timed(name, getattr(module, name)))

    def _timed(self, name, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


def measure_uploads(key: str, images: list[Path]) -> dict:
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_HOST="127.0.0.1")

    def post(image: Path) -> str:
        upload = SimpleUploadedFile(image.name, image.read_bytes(), content_type="image/jpeg")
        response = client.post("/api/v1/studies/", {"file": upload})
        if response.status_code != 202:
            raise SystemExit(f"upload refused: {response.status_code} {response.content[:200]!r}")
        return response.json()["id"]

    # Warm-up, predicted at once so the worker's measure holds the timed uploads only:
    # first-request imports and connections, the model's first batch.
    _predict_now(post(images[-1]))
    wall, cpu = time.perf_counter(), time.process_time()
    codes = [post(image) for image in images[:-1]]
    count = len(codes)
    return {
        "uploads": count,
        "cpu_ms_per_upload": round((time.process_time() - cpu) / count * 1000, 2),
        "wall_ms_per_upload": round((time.perf_counter() - wall) / count * 1000, 2),
        "codes": codes,
    }


def _predict_now(code: str) -> None:
    from diagnostics import pipeline
    from diagnostics.models import Study

    pipeline.predict_studies([Study.objects.get(code=code).pk])


def measure_worker(codes: list[str]) -> dict:
    from diagnostics import pipeline
    from diagnostics.models import Study

    timer = StageTimer(pipeline, ["_run_model"])
    pks = list(Study.objects.filter(code__in=codes).order_by("pk").values_list("pk", flat=True))
    wall, cpu = time.perf_counter(), time.process_time()
    done = pipeline.predict_studies(pks[:1])
    seconds = time.perf_counter() - wall
    if sorted(done) != pks:
        raise SystemExit(f"the worker completed {len(done)} of {len(pks)} studies")
    model = timer.seconds["_run_model"]
    count = len(pks)
    return {
        "studies": count,
        "images_per_s": round(count / seconds, 2),
        "ms_per_study": round(seconds / count * 1000, 2),
        "model_ms_per_study": round(model / count * 1000, 2),
        "other_ms_per_study": round((seconds - model) / count * 1000, 2),
        "cpu_ms_per_study": round((time.process_time() - cpu) / count * 1000, 2),
        "model_share": round(model / seconds, 2),
    }


def run(args) -> dict:
    import torch

    if args.cpus:
        cpus = {int(cpu) for cpu in args.cpus.split(",")}
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))
    workdir = Path(tempfile.mkdtemp(prefix="pleura-bench-costs-"))
    end_to_end._configure_django(args, workdir)
    version, key = end_to_end._prepare_database(Path(args.model_dir), workdir)
    images = sorted((end_to_end.TRAIN / "PNEUMONIA").glob("*.jpeg"))[: args.n + 1]
    uploads = measure_uploads(key, images)
    worker = measure_worker(uploads.pop("codes"))
    raw = end_to_end.raw_throughput(version, end_to_end.raw_images(images[:-1]), os.sched_getaffinity(0))
    return {
        "model": version.name,
        "cpus": sorted(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "upload": uploads,
        "worker": worker,
        "raw_sustained_images_per_s": raw["sustained_images_per_second"],
        "raw_best_batch_images_per_s": raw["images_per_second"],
        "raw_batch_size": raw["batch_size"],
        "worker_to_raw": round(worker["images_per_s"] / raw["sustained_images_per_second"], 2),
    }


def render(result: dict, command: str) -> str:
    upload, worker = result["upload"], result["worker"]
    return "\n".join(
        [
            "## Pipeline costs per study, in one process (bench/pipeline_costs.py)",
            "",
            f"Command: `{command}` (PostgreSQL; CPUs {result['cpus']}, {result['torch_threads']} torch threads).",
            f"Model: {result['model']}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| upload request (API, integration key), CPU / wall | {upload['cpu_ms_per_upload']} ms / "
            f"{upload['wall_ms_per_upload']} ms |",
            f"| worker, per study: model (Grad-CAM, heatmap PNG) | {worker['model_ms_per_study']} ms |",
            f"| worker, per study: the rest, where the model is not running alongside "
            "(claim, decode, reuse lookup, store, audit) "
            f"| {worker['other_ms_per_study']} ms |",
            f"| worker draining {worker['studies']} queued studies | {worker['images_per_s']} images/s |",
            f"| raw batched model throughput (batch {result['raw_batch_size']}, Grad-CAM), same process, "
            f"sustained / best batch | {result['raw_sustained_images_per_s']} / "
            f"{result['raw_best_batch_images_per_s']} images/s |",
            f"| worker / raw sustained | {result['worker_to_raw']} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    end_to_end.service_arguments(parser, n_help="studies uploaded, then drained by the worker", redis_db=4)
    parser.add_argument("--cpus", default=None, help="comma-separated cores to run on (default: all)")
    args = parser.parse_args()
    end_to_end.report(run(args), args, "bench.pipeline_costs", "pipeline:costs", render)


if __name__ == "__main__":
    main()
