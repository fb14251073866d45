"""Fidelity and diversity of a synthetic set against real images, in one extractor's feature space.

- FID (Heusel et al. 2017): Frechet distance between Gaussians fitted to the two feature sets,
  |mu_r - mu_s|^2 + Tr(S_r + S_s - 2 (S_r S_s)^(1/2)). Biased upwards for small sets: compare equal sizes.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3,
  averaged over random subsets; unbiased, so usable for small sets; reported with its spread.
- Precision / recall (Kynkaanniemi et al. 2019): each set's manifold is the union of balls reaching every
  sample's k-th nearest neighbour; precision = share of synthetic samples inside the real manifold (fidelity),
  recall = share of real samples inside the synthetic one (coverage of the real variety).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import pairwise_distances
from sklearn.neighbors import NearestNeighbors

from dermt2im_hub.quality.config import FidelityConfig


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r = np.atleast_2d(np.cov(real, rowvar=False))
    cov_f = np.atleast_2d(np.cov(fake, rowvar=False))
    # Tr((S_r S_f)^(1/2)) = Tr((R S_f R)^(1/2)) with R = S_r^(1/2): two symmetric eigendecompositions, faster and
    # steadier than a general complex matrix square root, also when there are fewer samples than dimensions
    values, vectors = np.linalg.eigh(cov_r)
    root_r = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root_r @ cov_f @ root_r)
    trace_covmean = np.sqrt(np.clip(inner, 0.0, None)).sum()
    diff = mu_r - mu_f
    return float(max(0.0, diff @ diff + np.trace(cov_r) + np.trace(cov_f) - 2.0 * trace_covmean))


def _polynomial_mmd(real: np.ndarray, fake: np.ndarray) -> float:
    dim = real.shape[1]
    k_rr = (real @ real.T / dim + 1.0) ** 3
    k_ff = (fake @ fake.T / dim + 1.0) ** 3
    k_rf = (real @ fake.T / dim + 1.0) ** 3
    m, n = len(real), len(fake)
    within_r = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
    within_f = (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
    return float(within_r + within_f - 2.0 * k_rf.mean())


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subset_size: int = 1000, subsets: int = 100,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, standard deviation) of the unbiased polynomial-kernel MMD^2 over random subsets."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd(real[rng.choice(len(real), size, replace=False)],
                              fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(features) - 1)
    # each sample is its own first neighbour (distance 0), hence k + 1
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features)
    return distances[:, k]


def _inside_manifold(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    inside = np.zeros(len(queries), bool)
    for start in range(0, len(queries), chunk):
        distances = pairwise_distances(queries[start:start + chunk], support)
        inside[start:start + chunk] = (distances <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) <= k or len(fake) <= k:
        return math.nan, math.nan
    precision = _inside_manifold(fake, real, _kth_neighbour_radii(real, k)).mean()
    recall = _inside_manifold(real, fake, _kth_neighbour_radii(fake, k)).mean()
    return float(precision), float(recall)


def fidelity_metrics(real: np.ndarray, fake: np.ndarray, config: FidelityConfig | None = None) -> dict:
    config = config or FidelityConfig()
    out: dict = {"num_real": int(len(real)), "num_synthetic": int(len(fake))}
    if len(real) < 2 or len(fake) < 2:
        out["note"] = "fewer than 2 images on one side: nothing computed"
        return out
    kid, kid_std = kernel_inception_distance(real, fake, config.kid_subset_size, config.kid_subsets, config.seed)
    precision, recall = precision_recall(real, fake, config.nearest_k)
    out.update({"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std,
                "precision": precision, "recall": recall, "nearest_k": config.nearest_k})
    if min(len(real), len(fake)) <= real.shape[1]:
        out["note"] = "fewer images than feature dimensions: FID is biased upwards; compare at equal sizes"
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def fidelity_by_class(real: np.ndarray, real_labels: Sequence[str | None], fake: np.ndarray,
                      fake_labels: Sequence[str | None], config: FidelityConfig | None = None) -> dict:
    """{"overall": metrics, "per_class": {label: metrics}} for every label present on both sides."""
    real_labels, fake_labels = np.asarray(real_labels, object), np.asarray(fake_labels, object)
    result = {"overall": fidelity_metrics(real, fake, config), "per_class": {}}
    for label in sorted({str(x) for x in real_labels if x} & {str(x) for x in fake_labels if x}):
        result["per_class"][label] = fidelity_metrics(real[real_labels == label], fake[fake_labels == label],
                                                      config)
    return result
