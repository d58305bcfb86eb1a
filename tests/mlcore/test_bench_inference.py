"""The inference benchmark runs without a database and owns only its section of the doc."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from bench import inference
from tests.mlcore.helpers import SMALL_DATA, TINY_NAME


def test_benchmark_measures_throughput_latency_and_memory(tiny_model):
    result = inference.run_benchmark(tiny_model, device="cpu", batch_sizes=(1, 4), repeats=1, latency_runs=3)

    assert result["model_version"] == TINY_NAME
    assert (result["device"], result["image_size"]) == ("cpu", 64)
    assert [r["batch_size"] for r in result["forward_only"]] == [1, 4]
    assert [r["with_heatmap"] for r in result["with_gradcam"]] == [True, True]
    assert all(r["images_per_second"] > 0 for r in result["forward_only"] + result["with_gradcam"])
    latency = result["latency_single_image"]
    assert latency["runs"] == 3
    assert 0 < latency["p50_ms"] <= latency["p95_ms"]
    assert result["memory"]["peak_rss_mib"] > 50
    assert "cuda_max_allocated_mib" not in result["memory"]
    json.dumps(result)  # printable as JSON


def test_measure_throughput_is_callable_on_its_own(tiny_model):
    engine = inference.load_engine(tiny_model, "cpu")
    figure = inference.measure_throughput(engine, inference.load_images(SMALL_DATA), 2, repeats=2)
    assert set(figure) == {
        "batch_size",
        "with_heatmap",
        "images_per_second",
        "sustained_images_per_second",
        "median_batch_ms",
        "repeats",
    }
    assert (figure["batch_size"], figure["with_heatmap"], figure["repeats"]) == (2, False, 2)
    # The best batch is at least as fast as all of them together.
    assert 0 < figure["sustained_images_per_second"] <= figure["images_per_second"]


def test_writing_replaces_only_its_own_section(tiny_model, tmp_path):
    doc = tmp_path / "benchmarks.md"
    pipeline = "<!-- bench:pipeline -->\npipeline figures\n<!-- /bench:pipeline -->"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{pipeline}\n")

    inference.main([
        "--model-dir", str(tiny_model), "--device", "cpu", "--batch-sizes", "1", "2",
        "--repeats", "1", "--latency-runs", "1", "--write", str(doc),
    ])  # fmt: skip
    first = doc.read_text()
    inference.write_section(doc, "inference:cpu", "new figures")
    second = doc.read_text()

    assert first.startswith(f"# Benchmarks\n\nintro\n\n{pipeline}\n\n<!-- bench:inference:cpu -->\n")
    assert first.endswith("<!-- /bench:inference:cpu -->\n")
    assert "| 2 |" in first
    assert f"python -m bench.inference --model-dir {tiny_model} --device cpu --batch-sizes 1 2 --repeats 1" in first
    section = "<!-- bench:inference:cpu -->\nnew figures\n<!-- /bench:inference:cpu -->\n"
    assert second == f"# Benchmarks\n\nintro\n\n{pipeline}\n\n{section}"


def test_processes_measured_at_once_pool_over_the_time_from_first_start_to_last_finish():
    # Two processes of batch 4: three batches from t=10.0 to 10.6, two from t=10.1 to 10.9.
    shares = [
        {
            "started": 10.0,
            "finished": 10.6,
            "batch_seconds": [0.2, 0.2, 0.2],
            "device": "cpu",
            "device_description": "d",
        },
        {"started": 10.1, "finished": 10.9, "batch_seconds": [0.5, 0.3], "device": "cpu", "device_description": "d"},
    ]

    figure = inference.pool_process_shares(shares, batch_size=4)

    # 20 images in 0.9 s, not the sum of each process's own rate (20.0 + 10.0).
    assert figure["sustained_images_per_second"] == 22.22
    # Each process at its fastest batch at the same moment: 4 / 0.2 + 4 / 0.3.
    assert figure["images_per_second"] == 33.33
    assert (figure["repeats"], figure["median_batch_ms"], figure["batch_size"]) == (5, 200.0, 4)
    assert (figure["device"], figure["with_heatmap"]) == ("cpu", True)


def test_measuring_processes_run_every_batch_once_across_the_processes_measure_after_measure(tiny_model):
    engine = inference.load_engine(tiny_model, "cpu")
    cpus = os.sched_getaffinity(0)
    images = inference.load_images(SMALL_DATA)

    with inference.MeasuringProcesses(engine.spec, processes=2, cpus=cpus, device="cpu") as measuring:
        first = measuring.measure(images, 2, repeats=4)
        second = measuring.measure(images, 3, repeats=2)

    assert (first["processes"], first["repeats"], first["batch_size"]) == (2, 4, 2)
    assert (second["processes"], second["repeats"], second["batch_size"]) == (2, 2, 3)
    assert first["torch_threads"] == max(1, len(cpus) // 2)
    assert first["device"] == "cpu"
    assert first["device_description"].startswith("CPU: ")
    assert 0 < first["sustained_images_per_second"] <= first["images_per_second"]


def test_a_measuring_process_that_cannot_load_the_model_fails_the_measure_with_its_reason(tiny_model, tmp_path):
    spec = dataclasses.replace(inference.load_engine(tiny_model, "cpu").spec, weights_path=tmp_path / "gone.pt")

    images = inference.load_images(SMALL_DATA)
    measuring = inference.MeasuringProcesses(spec, processes=2, cpus=os.sched_getaffinity(0), device="cpu")
    try:
        with pytest.raises(RuntimeError, match=r"^a measuring process failed: \w+"):
            measuring.measure(images, 2, repeats=2)
    finally:
        measuring.close()


def test_a_measuring_process_that_died_fails_the_measure_instead_of_hanging_it(tiny_model):
    spec = inference.load_engine(tiny_model, "cpu").spec
    images = inference.load_images(SMALL_DATA)
    measuring = inference.MeasuringProcesses(spec, processes=2, cpus=os.sched_getaffinity(0), device="cpu")
    try:
        measuring._workers[0].kill()
        measuring._workers[0].join()
        with pytest.raises(RuntimeError, match=r"^a measuring process exited with code -9 before answering$"):
            measuring.measure(images, 2, repeats=2)
    finally:
        measuring.close()
