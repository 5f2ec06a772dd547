"""Distillation training of FraQAT students."""

from fraqat_deploy.train.config import TrainConfig
from fraqat_deploy.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train"]
