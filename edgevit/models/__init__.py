from edgevit.models.base import Family, ForeignLayout, register_family
from edgevit.models.presets import Preset, preset_name
from edgevit.models.registry import create_model, family_of, list_models, model_family, register_model

__all__ = ["Preset", "preset_name", "create_model", "list_models", "model_family", "register_model", "Family",
           "ForeignLayout", "register_family", "family_of"]
