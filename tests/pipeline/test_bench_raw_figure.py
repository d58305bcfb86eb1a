"""The pipeline benchmark's raw figure: measured before and after the load, combined by time."""

from __future__ import annotations

from bench.pipeline import combined_raw


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


def test_sustained_rate_is_all_images_over_all_the_time_of_both_measures():
    # 256 images in 6.4 s, then 256 images in 8 s: 512 in 14.4 s, not the mean of the rates (36).
    raw = combined_raw(_raw(sustained=40.0, best=48.0), _raw(sustained=32.0, best=50.0))

    assert raw["sustained_images_per_second"] == 35.56
    assert raw["sustained_before_and_after"] == [40.0, 32.0]
    assert raw["images_per_second"] == 50.0
    assert raw["repeats"] == 64
    assert (raw["batch_size"], raw["device"]) == (8, "cpu")
