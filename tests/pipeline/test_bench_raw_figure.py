"""The pipeline benchmark's figures: raw measures and load rounds, each pooled by time."""

from __future__ import annotations

from bench.pipeline import combined_raw, pooled_load, raw_batches_for


def _raw(sustained: float, best: float) -> dict:
    return {
        "batch_size": 8,
        "with_heatmap": True,
        "repeats": 32,
        "images_per_second": best,
        "sustained_images_per_second": sustained,
        "median_batch_ms": 200.0,
        "device": "cpu",
    }


def _load(images: int, seconds: float, latencies: list[float], model_s: float, busy_s: float) -> dict:
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": round(images / seconds, 2),
        "latencies_s": latencies,
        "batches": images // 8,
        "model_s": model_s,
        "busy_s": busy_s,
    }


def test_sustained_rate_is_all_images_over_all_the_time_of_every_measure():
    # 256 images in 6.4 s, 256 in 8 s, 256 in 6.4 s: 768 in 20.8 s, not the mean of the rates (37.33).
    raw = combined_raw([_raw(sustained=40.0, best=48.0), _raw(sustained=32.0, best=50.0), _raw(40.0, 47.0)])

    assert raw["sustained_images_per_second"] == 36.92
    assert raw["sustained_each"] == [40.0, 32.0, 40.0]
    assert raw["images_per_second"] == 50.0
    assert raw["repeats"] == 96
    assert (raw["batch_size"], raw["device"]) == (8, "cpu")


def test_rounds_pool_into_all_images_over_all_their_time_and_every_studys_latency():
    # 16 images in 0.5 s, then 16 in 1.5 s: 32 in 2 s (16/s), not the mean of the rates (21.33).
    first = _load(16, 0.5, [0.1] * 16, model_s=0.4, busy_s=0.45)
    second = _load(16, 1.5, [0.2] * 15 + [1.4], model_s=1.2, busy_s=1.35)

    load = pooled_load([first, second])

    assert load["images_per_s"] == 16.0
    assert (load["rounds"], load["images"], load["seconds"], load["batches"], load["mean_batch_size"]) == (
        2,
        32,
        2.0,
        4,
        8.0,
    )
    assert (load["p50_s"], load["p95_s"]) == (0.15, 0.2)
    assert (load["model_s"], load["model_share"], load["worker_busy_share"]) == (1.6, 0.8, 0.9)


def test_raw_measure_gives_every_measuring_process_the_same_number_of_batches():
    from diagnostics.pipeline import MAX_BATCH

    # One image more than four full batches: five batches for one process, two each for four.
    assert raw_batches_for(4 * MAX_BATCH + 1) == 5
    assert raw_batches_for(4 * MAX_BATCH + 1, processes=4) == 8
    assert raw_batches_for(1, processes=4) == 4
