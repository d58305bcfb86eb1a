"""Calibration of the network's logit into a probability a doctor can read at face value.

Temperature scaling with an offset: p = sigmoid(logit / T + b). The offset is needed
because training weights the classes equally (see training.py), which shifts the logit
away from the true class prior; temperature alone can only stretch it.
"""

from __future__ import annotations

import numpy as np
import torch

# Bounds of the fit. On validation scores the model separates perfectly (a fine-tune's
# own split), the likelihood keeps rising as the temperature falls, and the fit collapsed
# to T 0.063 and b 38.7: 565 of 786 locked images at a probability of exactly 1.0 shown
# to doctors, a threshold of 1.0, and ties that lowered the measured AUC (ML review). The
# shipped model fitted T 1.03, b 2.48.
TEMPERATURE_RANGE = (0.5, 100.0)
BIAS_RANGE = (-8.0, 8.0)


def fit_temperature(logits: np.ndarray, targets: np.ndarray, steps: int = 200) -> tuple[float, float]:
    """Minimise the negative log-likelihood on held-out data within TEMPERATURE_RANGE and
    BIAS_RANGE; returns (temperature, bias).

    The bounds are a smooth map of unbounded parameters (log T and b through a sigmoid),
    not a clamp: a clamped step had no gradient, and the fit stayed at a bound it had
    overstepped even where the best fit within the bounds lay inside (diff review)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64)
    low, high = (float(np.log(bound)) for bound in TEMPERATURE_RANGE)
    start = -low / (high - low)  # where T = 1
    raw_t = torch.full((1,), float(np.log(start / (1 - start))), dtype=torch.float64, requires_grad=True)
    raw_b = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # b = 0
    optimizer = torch.optim.LBFGS([raw_t, raw_b], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def bounded() -> tuple[torch.Tensor, torch.Tensor]:
        temperature = (low + (high - low) * torch.sigmoid(raw_t)).exp()
        offset = BIAS_RANGE[0] + (BIAS_RANGE[1] - BIAS_RANGE[0]) * torch.sigmoid(raw_b)
        return temperature, offset

    def closure():
        optimizer.zero_grad()
        temperature, offset = bounded()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / temperature + offset, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature, offset = bounded()
    return float(temperature.item()), float(offset.item())


def calibrated_probability(logits: np.ndarray | torch.Tensor, temperature: float, bias: float) -> np.ndarray:
    z = torch.as_tensor(logits, dtype=torch.float64)
    return torch.sigmoid(z / temperature + bias).numpy()
