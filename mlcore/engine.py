"""Inference: one loaded model version, batches of grayscale arrays in, dataclasses out.

Create the engine after a worker process forks (never at import): CUDA contexts do
not survive fork, and each process should hold its own copy of the weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlcore.calibration import calibrated_probability
from mlcore.gradcam import cam_to_size, forward_with_cam, heatmap_overlay_png
from mlcore.network import build_network, load_weights
from mlcore.preprocessing import to_model_input

HEATMAP_MAX_SIDE = 512
PNEUMONIA = "pneumonia"
NORMAL = "normal"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    image_size: int
    weights_path: Path
    weights_sha256: str
    threshold: float
    temperature: float = 1.0
    logit_bias: float = 0.0

    @classmethod
    def from_description(cls, model_dir: Path, description: dict) -> ModelSpec:
        """The spec of a `train_model` output folder, from its model.json contents."""
        return cls(
            name=description["name"],
            architecture=description["architecture"],
            image_size=description["image_size"],
            weights_path=Path(model_dir) / description["weights"],
            weights_sha256=description["weights_sha256"],
            threshold=description["threshold"],
            temperature=description["temperature"],
            logit_bias=description.get("logit_bias", 0.0),
        )


@dataclass(frozen=True)
class PredictionResult:
    probability: float
    label: str
    threshold: float
    model_version: str
    device: str
    latency_ms: float
    batch_size: int
    # float32 in [0, 1] with the input image's aspect ratio (long side at most
    # HEATMAP_MAX_SIDE), and the same as a transparent palette PNG overlay: browsers
    # stretch it over the radiograph, so a larger one would only cost encoding time.
    heatmap: np.ndarray | None = None
    heatmap_png: bytes | None = None


class NonFiniteOutput(ArithmeticError):
    """The network gave no number for an image (NaN), so there is no finding to give:
    compared with the threshold, NaN is never above it and would read as "normal"."""


def is_out_of_memory(error: BaseException) -> bool:
    """The device (or the host) ran out of memory: the images are not at fault, and the
    same images may well fit once other work lets go of it."""
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError))


def release_cached_memory() -> None:
    """Hand the CUDA caching allocator's free blocks back after an out-of-memory error."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def use_cpu_threads(count: int) -> None:
    """Torch's intra-op threads for this process (CPU inference, and the CPU side of a GPU worker)."""
    torch.set_num_threads(max(1, count))


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class InferenceEngine:
    def __init__(self, spec: ModelSpec, device: str | None = None):
        self.spec = spec
        self.device = pick_device(device)
        network = load_weights(build_network(spec.architecture), spec.weights_path, spec.weights_sha256)
        network.eval().requires_grad_(False)
        if self.device.type == "cuda":
            network = network.half()  # the tensor cores' precision
        # channels_last on both devices: the tensor cores, and on a CPU oneDNN's
        # convolutions and PyTorch's pooling, are vectorised over channels in this layout.
        # In NCHW the stem's max-pool alone took 12% of a CPU worker's time; on one EPYC
        # core the shipped model (128 px, batch 16, Grad-CAM) ran 27% faster this way.
        self.network = network.to(self.device, memory_format=torch.channels_last)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32

    def _batch(self, grays: list[np.ndarray]) -> torch.Tensor:
        batch = torch.stack([to_model_input(gray, self.spec.image_size) for gray in grays])
        return batch.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)

    def logits(self, grays: list[np.ndarray]) -> np.ndarray:
        """Raw logits without heatmaps (evaluation)."""
        with torch.inference_mode():
            return self.network(self._batch(grays)).reshape(-1).float().cpu().numpy()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return calibrated_probability(logits, self.spec.temperature, self.spec.logit_bias)

    def warm_up(self, max_batch: int, with_heatmap: bool = True) -> int:
        """Predict a blank image of the input size at every batch size a worker may send
        (only batch 1 on a CPU), so no study waits for the set-up of a first pass.
        Returns the batches run.

        On CUDA the first batch of each new size is slow: cuDNN chooses and builds its
        kernels for that shape. On an H100 (ResNet-18, 128 px, float16, Grad-CAM), batches
        of 3 to 32 took 53-161 ms the first time and 7-50 ms the next (bench/batch_shapes.py,
        docs/benchmarks.md, fourth H100 visit). A worker's batches come in every size up
        to its maximum, so under load each pool process paid this again and again. On one
        EPYC core the CPU showed no such cost for sizes 3 to 32, so a CPU warms with one
        batch, which loads what lazy state it has. `with_heatmap` as the engine will be
        run: a shadow candidate predicts without Grad-CAM, a pass of other kernels.
        """
        blank = np.zeros((self.spec.image_size, self.spec.image_size), dtype=np.uint8)
        sizes = range(1, max_batch + 1) if self.device.type == "cuda" else [1]
        for size in sizes:
            self.predict([blank] * size, with_heatmap=with_heatmap)
        return len(sizes)

    def predict(self, grays: list[np.ndarray], with_heatmap: bool = True) -> list[PredictionResult]:
        if not grays:
            return []
        started = time.perf_counter()
        if with_heatmap:
            logits, cams = forward_with_cam(self.network, self._batch(grays))
            logits, cams = logits.cpu().numpy(), cams.cpu()
        else:
            logits, cams = self.logits(grays), None
        probabilities = self.probabilities(logits)
        if not np.isfinite(probabilities).all():
            raise NonFiniteOutput(
                f"{int(np.sum(~np.isfinite(probabilities)))} of {len(grays)} images gave no probability"
            )
        heatmaps = [
            cam_to_size(cams[i], *_heatmap_shape(gray)) if cams is not None else None for i, gray in enumerate(grays)
        ]
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        latency_ms = (time.perf_counter() - started) * 1000.0
        return [
            PredictionResult(
                probability=float(probability),
                label=PNEUMONIA if probability >= self.spec.threshold else NORMAL,
                threshold=self.spec.threshold,
                model_version=self.spec.name,
                device=str(self.device),
                latency_ms=latency_ms,
                batch_size=len(grays),
                heatmap=heatmap,
                heatmap_png=heatmap_overlay_png(heatmap) if heatmap is not None else None,
            )
            for probability, heatmap in zip(probabilities, heatmaps, strict=True)
        ]


def _heatmap_shape(gray: np.ndarray) -> tuple[int, int]:
    height, width = gray.shape
    scale = min(1.0, HEATMAP_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
