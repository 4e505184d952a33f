"""Model definitions a vendor may pin for evaluation jobs (entry points ``module:function``).

``mlp``: a stack of dense layers ``layers.<i>.weight`` (out x in) and ``layers.<i>.bias``, ReLU
between them and a softmax at the end (logistic regression is the one-layer case). NumPy only,
so a site evaluates without any framework a vendor might otherwise require.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from protocol.vendor import VendorError


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def mlp(tensors: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``predict(features) -> class probabilities`` of the dense stack in ``tensors``."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    index = 0
    while f"layers.{index}.weight" in tensors:
        weight = np.asarray(tensors[f"layers.{index}.weight"], dtype=np.float64)
        bias = np.asarray(tensors.get(f"layers.{index}.bias", np.zeros(weight.shape[0])), dtype=np.float64)
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise VendorError(f"layers.{index}: weight must be (out, in) and bias (out,)")
        if layers and layers[-1][0].shape[0] != weight.shape[1]:
            raise VendorError(
                f"layers.{index}: takes {weight.shape[1]} inputs, the layer before gives {layers[-1][0].shape[0]}"
            )
        layers.append((weight, bias))
        index += 1
    if not layers or set(tensors) - {f"layers.{i}.{p}" for i in range(index) for p in ("weight", "bias")}:
        raise VendorError("an mlp model is layers.<i>.weight / layers.<i>.bias tensors only")

    def predict(features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != layers[0][0].shape[1]:
            raise VendorError(f"the model takes {layers[0][0].shape[1]} features, the site has {x.shape[1:]}")
        for i, (weight, bias) in enumerate(layers):
            x = x @ weight.T + bias
            if i < len(layers) - 1:
                x = np.maximum(x, 0.0)
        return _softmax(x)

    return predict


__all__ = ["mlp"]
