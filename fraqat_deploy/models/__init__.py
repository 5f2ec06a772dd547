"""Model adapters, registered by name (``@register_model``)."""

from fraqat_deploy.models import gemma, sana  # noqa: F401  (registration)
from fraqat_deploy.models.base import (
    DistillData,
    LoadedModel,
    ModelAdapter,
    get_adapter,
    register_model,
    registered_models,
)

__all__ = [
    "DistillData",
    "LoadedModel",
    "ModelAdapter",
    "get_adapter",
    "register_model",
    "registered_models",
]
