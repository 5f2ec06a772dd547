"""Model adapters, registered by name (``@register_model``)."""

from fraqat_deploy.models import digits, gemma, sana, tiny_gemma  # noqa: F401  (registration)
from fraqat_deploy.models.base import (
    Component,
    DistillData,
    LoadedModel,
    ModelAdapter,
    get_adapter,
    register_model,
    registered_models,
)

__all__ = [
    "Component",
    "DistillData",
    "LoadedModel",
    "ModelAdapter",
    "get_adapter",
    "register_model",
    "registered_models",
]
