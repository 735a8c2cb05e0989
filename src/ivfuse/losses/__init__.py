"""Training losses shared by the fusion methods."""

from .fusion import FusionLoss, gradient_loss, intensity_loss, ssim_loss
from .learned import LossGenerator, learned_fusion_loss

__all__ = ["FusionLoss", "LossGenerator", "gradient_loss", "intensity_loss", "learned_fusion_loss", "ssim_loss"]
