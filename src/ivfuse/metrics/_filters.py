"""Filtering helpers reproducing MATLAB's ``fspecial``/``filter2``/``conv2``/``imfilter`` on float64 arrays.

All functions take 2-D ``float64`` arrays (H×W) and return new arrays. Separable kernels are applied as
two 1-D passes (exactly the same sums as the 2-D kernel, up to floating-point summation order).
"""

from __future__ import annotations

import cv2
import numpy as np

cv2.setNumThreads(1)  # metrics run one image per process; OpenCV threads would oversubscribe the cores

EPS = np.finfo(np.float64).eps  # MATLAB's eps


def gaussian_1d(n: int, sigma: float) -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', n, sigma)``: the outer product of two equals the 2-D kernel.

    MATLAB zeroes 2-D taps below ``eps * max``; for every (n, sigma) used by the fusion metrics
    (n <= 17, sigma >= n/5 or 1.5) no tap is that small, which :func:`gaussian_2d` asserts.
    """
    half = (n - 1) / 2.0
    x = np.arange(-half, half + 1)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def gaussian_2d(n: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', n, sigma)`` (normalised to sum 1)."""
    half = (n - 1) / 2.0
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < EPS * h.max()] = 0
    return h / h.sum()


def filter2_valid_sep(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``filter2(g' * g, x, 'valid')`` for a symmetric separable kernel given by its 1-D factor ``g``."""
    n = g.size
    h, w = x.shape
    if h < n or w < n:
        raise ValueError(f"image {h}x{w} is smaller than the {n}x{n} filter window")
    c = n // 2
    y = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
    return y[c : h - n + 1 + c, c : w - n + 1 + c]


def filter2_same(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``filter2(k, x, 'same')``: 2-D correlation with zero padding, odd-sized kernel."""
    return cv2.filter2D(x, cv2.CV_64F, k, borderType=cv2.BORDER_CONSTANT)


def conv2_same(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``conv2(x, k, 'same')``: 2-D convolution with zero padding, odd-sized kernel."""
    return cv2.filter2D(x, cv2.CV_64F, k[::-1, ::-1].copy(), borderType=cv2.BORDER_CONSTANT)


def downsample2(x: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` followed by ``(1:2:end, 1:2:end)``.

    MATLAB anchors an even kernel at its top-left tap, so each output averages the 2×2 block starting at
    an even index; the last row/column is replicated for odd sizes.
    """
    h, w = x.shape
    p = np.pad(x, ((0, h % 2), (0, w % 2)), mode="symmetric")
    return (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2]) / 4.0


def matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: halves away from zero (numpy rounds halves to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def normalize1(x: np.ndarray) -> np.ndarray:
    """``normalize1.m`` of Liu et al. / VIFB: min-max stretch to ``round(0..255)`` (unless all-zero)."""
    hi, lo = x.max(), x.min()
    if hi == 0 and lo == 0:
        return x.copy()
    return matlab_round((x - lo) / (hi - lo) * 255)


def sobel_tang(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sobel_fn.m`` (Tang / Petrovic Nabf): /8-scaled Sobel on a mirror-extended image -> (gv, gh)."""
    vt = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64) / 8
    ht = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64) / 8
    return (
        cv2.filter2D(x, cv2.CV_64F, vt, borderType=cv2.BORDER_REFLECT_101),
        cv2.filter2D(x, cv2.CV_64F, ht, borderType=cv2.BORDER_REFLECT_101),
    )
