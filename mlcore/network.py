"""The network: a torchvision ResNet with one grey input channel and a single logit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torchvision
from torch import nn

ARCHITECTURES = ("resnet18", "resnet34", "resnet50")


def build_network(architecture: str = "resnet18") -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    network = getattr(torchvision.models, architecture)(weights=None, num_classes=1)
    # Radiographs are grey: one input channel instead of three.
    network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return network


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class WeightsMismatchError(Exception):
    """The weights file is not the one the model version was registered with."""


def load_weights(network: nn.Module, path: str | Path, expected_sha256: str | None = None) -> nn.Module:
    """Load a state dict saved by `save_weights` (or a torchvision checkpoint).

    A three-channel first convolution (e.g. ImageNet weights) is folded to one grey
    channel by summing over colour, which keeps its response to grey images.
    """
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256:
            raise WeightsMismatchError(
                f"{Path(path).name}: sha256 {actual} does not match registered {expected_sha256}"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.shape[1] == 3:
        state["conv1.weight"] = conv1.sum(dim=1, keepdim=True)
    fc_weight = state.get("fc.weight")
    if fc_weight is not None and fc_weight.shape[0] != 1:
        # An ImageNet classifier head is useless here: keep the new single-logit head.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        network.load_state_dict(state, strict=False)
        return network
    network.load_state_dict(state)
    return network


def save_weights(network: nn.Module, path: str | Path) -> str:
    """Save float32 weights and return their sha256."""
    state = {
        k: v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()
        for k, v in network.state_dict().items()
    }
    torch.save(state, path)
    return file_sha256(path)
