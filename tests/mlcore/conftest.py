from __future__ import annotations

from pathlib import Path

import pytest

from tests.mlcore.helpers import copy_model_dir, tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A model really trained by `train_model` on the fixture radiographs, once per session."""
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture
def weights_dir(tmp_path, tiny_model, settings) -> Path:
    """MODEL_WEIGHTS_DIR pointed at a private copy of the tiny model, never at the shipped weights."""
    folder = tmp_path / "weights"
    folder.mkdir()
    copy_model_dir(tiny_model, folder / tiny_model.name)
    settings.MODEL_WEIGHTS_DIR = folder
    settings.DEFAULT_MODEL_NAME = tiny_model.name
    return folder
