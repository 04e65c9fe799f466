"""Diffusion models: a class-conditional DDPM trained here on Fashion-MNIST (diffusers ``UNet2DModel``),
its metrics (FID-FMNIST, KID, precision/recall over a classifier trained here) and the pruning methods
that act on its UNet (structural channel pruning, Diff-Pruning)."""

from .data import fashion_mnist
from .ddpm import (NoiseSchedule, TrainConfig, TrainReport, ddim_sample, denoising_loss, load_unet, save_unet,
                   schedule_of, train_ddpm_)
from .model import UNetConfig, build_unet, count_params

__all__ = ["NoiseSchedule", "TrainConfig", "TrainReport", "UNetConfig", "build_unet", "count_params",
           "ddim_sample", "denoising_loss", "fashion_mnist", "load_unet", "save_unet", "schedule_of",
           "train_ddpm_"]
