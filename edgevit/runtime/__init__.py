from edgevit.runtime.policies import (
                                     BatteryPolicy,
                                     CompositePolicy,
                                     FixedPolicy,
                                     LatencyPolicy,
                                     Policy,
                                     ThermalPolicy,
                                     build_policy,
)
from edgevit.runtime.runtime import Prediction, PresetInfo, Runtime, load, load_info
from edgevit.runtime.signals import default_sources
from edgevit.runtime.switcher import Pacing, Switcher, SwitchEvent

__all__ = ["Prediction", "PresetInfo", "Runtime", "load", "load_info", "Switcher", "SwitchEvent", "Pacing", "Policy",
           "BatteryPolicy", "LatencyPolicy", "ThermalPolicy", "CompositePolicy", "FixedPolicy", "build_policy",
           "default_sources"]
