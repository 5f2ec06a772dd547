"""Paired image metrics that need no learned weights: PSNR and SSIM, plus reading and writing 8-bit images.

Images are [3, H, W] (or [H, W, 3] numpy from a PNG) in [0, 1]. Every comparison in ``compare`` runs on the 8-bit
images as saved, so a PyTorch image and a phone's PNG are scored on the same footing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

#: PSNR of identical images (the MSE is 0): a finite cap keeps means and JSON well defined
PSNR_CAP_DB = 100.0

# Wang, Bovik, Sheikh, Simoncelli (2004), "Image quality assessment: from error visibility to structural
# similarity": an 11x11 Gaussian window of standard deviation 1.5, K1 = 0.01, K2 = 0.03, dynamic range L.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def as_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """[3, H, W] float64 from a tensor [C, H, W] or a numpy image [H, W, C] / [H, W]."""
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu().double()
    else:
        a = np.asarray(image, dtype=np.float64)
        t = torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"expected one image [C, H, W], got shape {tuple(t.shape)}")
    return t


def _pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_chw(a), as_chw(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(L^2 / MSE)``, capped at ``PSNR_CAP_DB`` for identical images."""
    x, y = _pair(a, b)
    mse = float(((x - y) ** 2).mean())
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(10.0 * math.log10(data_range**2 / mse), PSNR_CAP_DB)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 2-D Gaussian window [size, size] (float64)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al. 2004) of two images, averaged over channels.

    Local statistics come from the Gaussian window over the positions where it fits entirely inside the image (the
    paper's MATLAB ``filter2(..., 'valid')``), without a sample-covariance correction. Images smaller than 11 pixels
    get the largest odd window that fits, its sigma scaled in proportion."""
    x, y = _pair(a, b)
    size = min(SSIM_WINDOW, x.shape[-2], x.shape[-1])
    size -= 1 - size % 2
    window = gaussian_window(size, SSIM_SIGMA * size / SSIM_WINDOW)[None, None]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    x, y = x[:, None], y[:, None]  # channels as the batch

    def local(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = local(x), local(y)
    var_x = local(x * x) - mu_x**2
    var_y = local(y * y) - mu_y**2
    cov = local(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


# -- 8-bit images ------------------------------------------------------------------------------------------


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8, rounded as ``generate.save_image`` and the phone app do."""
    t = as_chw(image).clamp(0, 1)
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(image: torch.Tensor | np.ndarray, path: Path) -> np.ndarray:
    """Write an 8-bit PNG; returns the 8-bit image written. A uint8 [H, W, 3] array is written as is."""
    array = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def load_png(path: Path) -> np.ndarray:
    """An image file as [H, W, 3] uint8 (grey and alpha images converted to RGB)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def unit(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float64 in [0, 1] (float64: PSNR and SSIM of 8-bit images stay exact)."""
    return torch.from_numpy(image.astype(np.float64) / 255.0).permute(2, 0, 1).contiguous()
