"""Grad-CAM: where the network looked, from the same forward pass that made the prediction."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn


def forward_with_cam(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N,) and Grad-CAM maps (N, h, w) in [0, 1] from one forward pass, no backward.

    The maps are taken at the last residual stage (`layer4`). The network's head is global
    average pooling then one linear unit, so the gradient of the logit with respect to
    layer4's activations is the unit's weight over h*w at every position: Grad-CAM's
    channel weights are the head's own weights (divided by h*w), and the map is
    relu(sum over channels of weight * activation), up to that positive factor, which the
    normalisation to [0, 1] removes. Grad-CAM reduces to CAM for such heads (Selvaraju et
    al., section 3.1), so the backward pass that Grad-CAM needs in general computes
    nothing new here. Skipping it and autograd's bookkeeping leaves a pure inference pass.
    """
    head = getattr(network, "fc", None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise TypeError("forward_with_cam needs a ResNet whose head is one linear unit after global average pooling")
    captured: dict[str, torch.Tensor] = {}

    def keep_activations(_module, _inputs, output: torch.Tensor) -> None:
        captured["a"] = output

    hook = network.layer4.register_forward_hook(keep_activations)
    try:
        with torch.inference_mode():
            logits = network(batch).reshape(-1).float()
            weights = head.weight.float().reshape(1, -1, 1, 1)
            cams = torch.relu((weights * captured["a"].float()).sum(dim=1))
            peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-8)
            return logits, cams / peak[:, None, None]
    finally:
        hook.remove()


def cam_to_size(cam: torch.Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.as_tensor(cam, dtype=torch.float32)[None, None]
    resized = nn.functional.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)
    return resized[0, 0].clamp(0, 1).numpy()


def colormap(values: np.ndarray) -> np.ndarray:
    """A blue-green-yellow-red ramp (values 0..1 -> RGB uint8), no plotting library needed."""
    anchors = np.array([0.0, 0.35, 0.6, 0.8, 1.0])
    colours = np.array([[30, 60, 200], [0, 190, 200], [120, 220, 60], [250, 200, 0], [230, 30, 20]], dtype=np.float64)
    channels = [np.interp(values, anchors, colours[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def _visibility(values: np.ndarray) -> np.ndarray:
    """0 below 0.15 (where the network hardly looked), rising to 1 where it looked hardest."""
    return np.clip((values - 0.15) / 0.85, 0, 1)


def overlay_alpha(values: np.ndarray) -> np.ndarray:
    """The overlay's opacity: clear where the network hardly looked, at most 210 of 255."""
    return (_visibility(values) * 210).astype(np.uint8)


# The overlay's 256 levels, each with its colour and opacity: a palette PNG's entries.
_LEVELS = np.linspace(0.0, 1.0, 256)
_OVERLAY_PALETTE = np.column_stack([colormap(_LEVELS), overlay_alpha(_LEVELS)]).astype(np.uint8).tobytes()


def heatmap_overlay_png(cam: np.ndarray) -> bytes:
    """A transparent overlay: colour where the network looked, clear elsewhere.

    Written as a 256-level palette PNG whose palette carries the opacity (a tRNS chunk),
    which browsers draw exactly as an RGBA one. One byte a pixel instead of four: a 512 px
    heatmap encodes several times faster and is a fraction of the size, and 256 levels
    are finer than a smooth Grad-CAM map's colours can show.
    """
    levels = np.rint(np.clip(cam, 0.0, 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(levels)
    image.putpalette(_OVERLAY_PALETTE, rawmode="RGBA")
    buffer = io.BytesIO()
    # Fastest zlib level: smooth maps compress well at any level, and the worker pays for each.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay_png(gray: np.ndarray, cam: np.ndarray, opacity: float = 0.45) -> bytes:
    """The radiograph with the heatmap blended in, for reports and the CLI."""
    base = np.repeat(gray[..., None], 3, axis=2).astype(np.float64)
    weight = opacity * _visibility(cam)[..., None]
    blended = base * (1 - weight) + colormap(cam).astype(np.float64) * weight
    buffer = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8), mode="RGB").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
