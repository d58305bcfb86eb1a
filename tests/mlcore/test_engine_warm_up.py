"""A worker's warm-up runs every shape its batches will have where a first pass at a shape is slow."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from mlcore.engine import InferenceEngine, ModelSpec, NonFiniteOutput
from mlcore.network import build_network, save_weights


def _spec(model_dir) -> ModelSpec:
    return ModelSpec.from_description(model_dir, json.loads((model_dir / "model.json").read_text()))


def _record_batches(engine: InferenceEngine, monkeypatch, *, run: bool) -> list[list[tuple]]:
    seen, real_predict = [], engine.predict

    def predict(grays, **kwargs):
        seen.append([(gray.shape, gray.dtype.name, int(gray.max())) for gray in grays])
        return real_predict(grays, **kwargs) if run else []

    monkeypatch.setattr(engine, "predict", predict)
    return seen


def test_a_cpu_engine_warms_up_with_one_blank_image(tiny_model, monkeypatch):
    engine = InferenceEngine(_spec(tiny_model), device="cpu")
    seen = _record_batches(engine, monkeypatch, run=True)

    assert engine.warm_up(max_batch=16) == 1

    assert seen == [[((64, 64), "uint8", 0)]]


def test_a_cuda_engine_warms_up_every_batch_size_up_to_the_maximum(tiny_model, monkeypatch):
    if torch.cuda.is_available():
        engine, run = InferenceEngine(_spec(tiny_model), device="cuda"), True
    else:
        # Without a GPU only the choice of batches can be checked: the network stays on the CPU.
        engine, run = InferenceEngine(_spec(tiny_model), device="cpu"), False
        monkeypatch.setattr(engine, "device", torch.device("cuda"))
    seen = _record_batches(engine, monkeypatch, run=run)

    assert engine.warm_up(max_batch=5) == 5

    assert seen == [[((64, 64), "uint8", 0)] * size for size in (1, 2, 3, 4, 5)]


def test_an_image_the_network_gives_no_number_for_is_refused_not_read_as_normal(tiny_model, tmp_path):
    # NaN compared with the threshold is never above it: the image would read "normal".
    network = build_network("resnet18")
    with torch.no_grad():
        network.fc.bias.fill_(float("nan"))
    path = tmp_path / "nan.pt"
    spec = dataclasses.replace(_spec(tiny_model), weights_path=path, weights_sha256=save_weights(network, path))
    engine = InferenceEngine(spec, device="cpu")

    with pytest.raises(NonFiniteOutput, match="2 of 2 images gave no probability"):
        engine.predict([np.zeros((64, 64), np.uint8), np.full((64, 64), 200, np.uint8)])
