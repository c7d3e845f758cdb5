from edgevit.runtime.runtime import Prediction, PresetInfo, Runtime, load

__all__ = ["Prediction", "PresetInfo", "Runtime", "load"]
