from edgevit.backends.base import Backend, EngineSpec, Runner, get_backend

__all__ = ["Backend", "EngineSpec", "Runner", "get_backend"]
