"""Fréchet distance between two feature sets, exact and cheap for any sample count.

    FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)

with unbiased covariances (``np.cov``, ddof 1), as torch-fidelity's ``fid_statistics_to_metric``.
torch-fidelity takes ``tr sqrt(S1 S2)`` from the eigenvalues of the non-symmetric d x d product
(about 10-40 s for d = 2048 on a 2-core CPU). The same trace is computed here without that:

- with A, B the centred features scaled by 1/sqrt(n-1) (S1 = A^T A, S2 = B^T B), the non-zero
  eigenvalues of S1 S2 are those of M M^T with M = A B^T, so tr sqrt(S1 S2) = sum of the singular
  values of the (n1 x n2) matrix M: used when min(n1, n2) <= d;
- otherwise with S1 = L L^T (L = U sqrt(max(lambda, 0)) from a symmetric eigendecomposition),
  tr sqrt(S1 S2) = sum sqrt(eig(L^T S2 L)), a symmetric d x d eigenproblem.

Everything runs in float64.
"""
from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance"]


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to (n1, d) and (n2, d) features (n1, n2 >= 2)."""
    first = np.asarray(features1, dtype=np.float64)
    second = np.asarray(features2, dtype=np.float64)
    if first.ndim != 2 or second.ndim != 2 or first.shape[1] != second.shape[1]:
        raise ValueError(f"features must be (n1, d) and (n2, d), got {first.shape} and {second.shape}")
    if min(first.shape[0], second.shape[0]) < 2:
        raise ValueError(f"each feature set needs at least 2 rows, got {first.shape[0]} and {second.shape[0]}")
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise ValueError("features contain NaN or inf")
    mean1, mean2 = first.mean(axis=0), second.mean(axis=0)
    scaled1 = (first - mean1) / np.sqrt(first.shape[0] - 1)
    scaled2 = (second - mean2) / np.sqrt(second.shape[0] - 1)
    trace1, trace2 = float((scaled1 ** 2).sum()), float((scaled2 ** 2).sum())
    dim = first.shape[1]
    if min(first.shape[0], second.shape[0]) <= dim:
        trace_sqrt = float(np.linalg.svd(scaled1 @ scaled2.T, compute_uv=False).sum())
    else:
        eigenvalues, eigenvectors = np.linalg.eigh(scaled1.T @ scaled1)
        factor = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))
        inner = factor.T @ (scaled2.T @ scaled2) @ factor
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2.0), 0.0, None)).sum())
    difference = mean1 - mean2
    return float(difference @ difference + trace1 + trace2 - 2.0 * trace_sqrt)
