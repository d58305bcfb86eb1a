"""Calibration of the network's logit into a probability a doctor can read at face value.

Temperature scaling with an offset: p = sigmoid(logit / T + b). The offset is needed
because training weights the classes equally (see training.py), which shifts the logit
away from the true class prior; temperature alone can only stretch it.
"""

from __future__ import annotations

import numpy as np
import torch


def fit_temperature(logits: np.ndarray, targets: np.ndarray, steps: int = 200) -> tuple[float, float]:
    """Minimise the negative log-likelihood on held-out data; returns (temperature, bias)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(targets, dtype=torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp() + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item()), float(bias.item())


def calibrated_probability(logits: np.ndarray | torch.Tensor, temperature: float, bias: float) -> np.ndarray:
    z = torch.as_tensor(logits, dtype=torch.float64)
    return torch.sigmoid(z / temperature + bias).numpy()
