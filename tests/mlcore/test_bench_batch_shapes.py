"""The batch-shape benchmark times each size twice, first and next, on real radiographs."""

from __future__ import annotations

import json

import torch

from bench import batch_shapes


def test_each_size_is_timed_first_and_next_in_the_order_given(tiny_model, capsys):
    threads = torch.get_num_threads()  # kept, so the rest of the session runs as before
    arguments = ["--model-dir", str(tiny_model), "--device", "cpu", "--sizes", "3", "2", "--threads", str(threads)]
    result = batch_shapes.main(arguments)

    assert (result["device"], result["torch_threads"]) == ("cpu", threads)
    assert list(result["batches"]) == [3, 2]
    assert all(timing["first_ms"] > 0 and timing["next_ms"] > 0 for timing in result["batches"].values())
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["batches"]) == ["3", "2"]
