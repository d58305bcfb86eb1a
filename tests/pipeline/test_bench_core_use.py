"""The pipeline benchmark tells which side set a round's pace from how busy each set of cores was."""

from __future__ import annotations

import os
import sys

import pytest

from bench.pipeline import busy_share, cpu_jiffies


def test_busy_share_is_the_busy_ticks_over_all_ticks_between_two_readings():
    assert busy_share((100, 400), (175, 500)) == 0.75
    assert busy_share((100, 400), (100, 500)) == 0.0


def test_busy_share_is_unknown_without_two_readings_or_without_time_between_them():
    assert busy_share(None, (175, 500)) is None
    assert busy_share((100, 400), None) is None
    assert busy_share((100, 400), (100, 400)) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_a_core_kept_busy_counts_as_busy():
    core = min(os.sched_getaffinity(0))
    before = cpu_jiffies({core})
    everywhere = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        started = os.times().elapsed
        while os.times().elapsed - started < 0.5:
            pass
    finally:
        os.sched_setaffinity(0, everywhere)
    after = cpu_jiffies({core})

    assert 0 <= before[0] <= before[1]
    assert busy_share(before, after) >= 0.5


def test_cores_that_do_not_exist_give_no_ticks():
    assert cpu_jiffies({10_000}) in {(0, 0), None}
