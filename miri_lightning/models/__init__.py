"""Velocity-field networks."""

from .unet import UNetConfig, VelocityUNet

__all__ = ["UNetConfig", "VelocityUNet"]
