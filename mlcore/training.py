"""Training from scratch (or fine-tuning) on a NORMAL/PNEUMONIA folder, split by patient.

Produces, in the output folder: weights.pt, model.json (everything the registry
needs, the per-epoch history among it), split.json (the patient-level split manifest),
val_predictions.npz; `train_model` adds the model card and training.log.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from mlcore import data
from mlcore.metrics import classification_report, operating_point
from mlcore.network import build_network, load_weights, save_weights
from mlcore.preprocessing import PIXEL_MEAN, PIXEL_STD, load_grayscale_file, to_model_input

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data_dir: Path
    out_dir: Path
    name: str = "pleura-resnet18"
    architecture: str = "resnet18"
    image_size: int = 160
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    patience: int = 4
    seed: int = 42
    min_sensitivity: float = 0.95
    workers: int | None = None
    device: str | None = None
    init_weights: Path | None = None
    extra_data_dirs: list[Path] = field(default_factory=list)
    max_images: int | None = None  # for smoke tests: take this many per class
    # Share of training images stretched to their own range (`RandomRangeStretch`). Off by
    # default: at 0.5 the shipped recipe measured worse, 16-bit uploads included (README).
    range_stretch: float = 0.0
    progress: bool = True


class TensorDataset(Dataset):
    """Preprocessed images held in memory; augmentation is applied after preprocessing."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, augment: nn.Module | None):
        self.images, self.targets, self.augment = images, targets, augment

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.augment is not None:
            image = self.augment(image)
        return image, self.targets[index]


class RandomContrast(nn.Module):
    """Exposure differences between machines: random gain and offset on normalised pixels."""

    def __init__(self, gain: float = 0.15, offset: float = 0.15):
        super().__init__()
        self.gain, self.offset = gain, offset

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gain = 1 + (torch.rand(1).item() * 2 - 1) * self.gain
        offset = (torch.rand(1).item() * 2 - 1) * self.offset
        return image * gain + offset


class RandomRangeStretch(nn.Module):
    """Images deeper than 8 bits reach the model stretched to their own darkest and
    brightest values (a 16-bit PNG, a DICOM without a window), while the 8-bit training
    JPEGs keep theirs, and 83% of them never reach white. The same pixels sent as a
    16-bit PNG flipped 3 of 786 validation labels (ML review). With probability `p` a
    training image is stretched the same way, so both kinds look alike to the model."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or torch.rand(1).item() >= self.p:
            return image
        gray = image * PIXEL_STD + PIXEL_MEAN  # back to 0..1 grey values
        low, high = gray.amin(), gray.amax()
        if float(high - low) < 1e-6:
            return image
        return ((gray - low) / (high - low) - PIXEL_MEAN) / PIXEL_STD


def chest_augmentation(range_stretch: float = 0.0) -> nn.Module:
    # Small rotations, shifts and zoom as patient positioning varies; no flips, since a
    # mirrored chest (heart on the right) is not an image the model will ever be shown.
    # The stretch comes first, on the whole image, as deeper images are stretched before
    # anything else; the affine's fill would otherwise count as the darkest value.
    return v2.Compose(
        [
            RandomRangeStretch(range_stretch),
            v2.RandomAffine(degrees=7, translate=(0.06, 0.06), scale=(0.92, 1.1)),
            RandomContrast(),
        ]
    )


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_tensors(samples: list[data.Sample], image_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    iterator = tqdm(samples, desc="loading", unit="img", disable=not progress, leave=False)
    images = torch.stack([to_model_input(load_grayscale_file(s.path), image_size) for s in iterator])
    targets = torch.tensor([s.target for s in samples], dtype=torch.float32)
    return images, targets


def _default_workers(device: torch.device) -> int:
    cores = os.cpu_count() or 1
    # On a small CPU machine the workers would steal cores from the training maths.
    return min(8, cores) if device.type == "cuda" else max(0, min(2, cores - 2))


def collect_samples(config: TrainConfig) -> list[data.Sample]:
    samples = data.scan_folder(config.data_dir)
    for extra in config.extra_data_dirs:
        samples.extend(data.scan_folder(extra))
    if config.max_images:
        rng = random.Random(config.seed)
        per_class = [[s for s in samples if s.target == t] for t in (0, 1)]
        samples = [s for group in per_class for s in rng.sample(group, min(config.max_images, len(group)))]
    return samples


def predict_logits(network: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> np.ndarray:
    network.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            # channels_last, as the inference engine runs it, so the metrics recorded here
            # are the serving path's own numbers (a threshold can sit on one image's score).
            batch = images[start : start + batch_size].to(device).contiguous(memory_format=torch.channels_last)
            if device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    outputs.append(network(batch).float().reshape(-1).cpu())
            else:
                outputs.append(network(batch).reshape(-1).cpu())
    return torch.cat(outputs).numpy()


def train(config: TrainConfig) -> dict:
    """Run a whole training and write its artefacts; returns the model description."""
    started = time.time()
    generator = seed_everything(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config.out_dir.mkdir(parents=True, exist_ok=True)

    samples = collect_samples(config)
    train_samples, val_samples = data.split_by_patient(samples, config.val_fraction, config.seed)
    manifest = data.split_manifest(train_samples, val_samples, seed=config.seed, val_fraction=config.val_fraction)
    (config.out_dir / "split.json").write_text(json.dumps(manifest, indent=1))
    log.info(
        "split by patient: train %d images (%d patients), val %d images (%d patients)",
        manifest["train"]["images"],
        manifest["train"]["patients"],
        manifest["val"]["images"],
        manifest["val"]["patients"],
    )

    train_images, train_targets = load_tensors(train_samples, config.image_size, config.progress)
    val_images, val_targets = load_tensors(val_samples, config.image_size, config.progress)

    network = build_network(config.architecture)
    if config.init_weights:
        load_weights(network, config.init_weights)
    # channels_last on both devices, as the engine serves it. On the 2-core VM it is
    # faster on the CPU too: a step of 32 images at 128 px took 1.11 to 1.31 s, against
    # 1.26 to 1.40 s in NCHW.
    network = network.to(device, memory_format=torch.channels_last)

    # Class imbalance (about 1 normal : 2.9 pneumonia): weight positives so both classes
    # count equally in the loss. The calibration step undoes the resulting logit shift.
    positives = float(train_targets.sum())
    pos_weight = torch.tensor([(len(train_targets) - positives) / max(positives, 1.0)], device=device)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    workers = config.workers if config.workers is not None else _default_workers(device)
    loader = DataLoader(
        TensorDataset(train_images, train_targets, chest_augmentation(config.range_stretch)),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = one_cycle(optimizer, config.learning_rate, config.epochs, steps_per_epoch=max(1, len(loader)))

    history: list[dict] = []
    best = {"auc": -math.inf, "epoch": 0, "state": None}
    val_np = val_targets.numpy()
    for epoch in range(1, config.epochs + 1):
        network.train()
        epoch_started, running, seen = time.time(), 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not config.progress, leave=False
        )
        for images, targets in bar:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = criterion(network(images).reshape(-1).float(), targets)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item() * len(targets)
            seen += len(targets)
            bar.set_postfix(loss=f"{running / max(seen, 1):.4f}")
        val_logits = predict_logits(network, val_images, device, config.batch_size * 2)
        report = classification_report(val_np, 1 / (1 + np.exp(-val_logits)), 0.5)
        entry = {
            "epoch": epoch,
            "train_loss": round(running / max(seen, 1), 5),
            "val_auc": report["roc_auc"],
            "val_accuracy_at_0.5": report["accuracy"],
            "lr": round(scheduler.get_last_lr()[0], 7),
            "seconds": round(time.time() - epoch_started, 1),
        }
        history.append(entry)
        log.info("epoch %(epoch)d: loss %(train_loss).4f, val AUC %(val_auc)s, %(seconds).0fs", entry)
        if report["roc_auc"] is not None and report["roc_auc"] > best["auc"]:
            best = {"auc": report["roc_auc"], "epoch": epoch, "state": copy.deepcopy(network.state_dict())}
        elif epoch - best["epoch"] >= config.patience:
            log.info("early stop: no better validation AUC for %d epochs", config.patience)
            break

    if best["state"] is not None:
        network.load_state_dict(best["state"])
    return _finish(
        config, network, device, val_images, val_np, train_samples, val_samples, manifest, history, best, started
    )


def _finish(
    config, network, device, val_images, val_np, train_samples, val_samples, manifest, history, best, started
) -> dict:
    """Calibrate, choose the operating point, save weights and describe the model."""
    val_logits = predict_logits(network, val_images, device, config.batch_size * 2)
    point = operating_point(val_logits, val_np, config.min_sensitivity)
    np.savez_compressed(config.out_dir / "val_predictions.npz", logits=val_logits, targets=val_np)

    weights_path = config.out_dir / "weights.pt"
    network = network.to("cpu", memory_format=torch.contiguous_format)
    sha256 = save_weights(network, weights_path)
    description = {
        "name": config.name,
        "architecture": config.architecture,
        "image_size": config.image_size,
        "weights": weights_path.name,
        "weights_sha256": sha256,
        "threshold": point.threshold,
        "temperature": point.temperature,
        "logit_bias": point.bias,
        "min_sensitivity": config.min_sensitivity,
        "validation_metrics": point.metrics,
        "best_epoch": best["epoch"],
        "training_data": {
            "folders": [str(config.data_dir), *map(str, config.extra_data_dirs)],
            "data_sha256": data.data_hash(train_samples + val_samples),
            "train_images": manifest["train"]["images"],
            "train_patients": manifest["train"]["patients"],
            "val_images": manifest["val"]["images"],
            "val_patients": manifest["val"]["patients"],
            "train_normal": manifest["train"]["normal"],
            "train_pneumonia": manifest["train"]["pneumonia"],
            "val_normal": manifest["val"]["normal"],
            "val_pneumonia": manifest["val"]["pneumonia"],
        },
        "hyperparameters": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(config).items()
            if k not in ("data_dir", "out_dir", "progress", "extra_data_dirs")
        },
        "device": str(device),
        "torch": torch.__version__,
        # Same seed and data give the same weights only with the same thread and worker
        # counts (a reduction's order changes with them).
        "torch_threads": torch.get_num_threads(),
        "data_loader_workers": config.workers if config.workers is not None else _default_workers(device),
        "training_seconds": round(time.time() - started, 1),
        "history": history,
    }
    (config.out_dir / "model.json").write_text(json.dumps(description, indent=2))
    log.info("validation: %s", json.dumps(point.metrics))
    return description


WARM_UP_SHARE = 0.2


def one_cycle(optimizer, max_lr: float, epochs: int, steps_per_epoch: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The learning-rate schedule: a fifth of the steps warming up, then annealing. torch
    ends the warm-up at share x steps - 1, which at 5 steps is step 0 itself, and its first
    step divided by zero (`train_model --max-images 100`, fresh-machine review): there, a
    little more warm-up."""
    share = WARM_UP_SHARE if WARM_UP_SHARE * epochs * steps_per_epoch != 1 else 1.5 * WARM_UP_SHARE
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch, pct_start=share
    )
