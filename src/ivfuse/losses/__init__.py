"""Training losses shared by the fusion methods."""

from .fusion import FusionLoss, gradient_loss, intensity_loss, ssim_loss

__all__ = ["FusionLoss", "gradient_loss", "intensity_loss", "ssim_loss"]
