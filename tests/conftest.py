import pytest

from edgevit.train import TrainConfig, train


@pytest.fixture(scope="session", autouse=True)
def _private_compile_cache(tmp_path_factory):
    """Compiled-engine caches of the tests stay out of the user's ~/.cache (subprocesses inherit this)."""
    import os

    old = os.environ.get("EDGEVIT_CACHE_DIR")
    os.environ["EDGEVIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgevit-cache"))
    yield
    if old is None:
        os.environ.pop("EDGEVIT_CACHE_DIR", None)
    else:
        os.environ["EDGEVIT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def quick_checkpoint(tmp_path_factory):
    """SuperViT-nano after a few dozen steps on digits: far from converged, enough to build and compare."""
    out = tmp_path_factory.mktemp("ckpt") / "quick.pt"
    train(TrainConfig(epochs=6, warmup_epochs=1, out=str(out)))
    return out


@pytest.fixture(scope="session")
def default_training(tmp_path_factory):
    """The embedded default trained with the CLI's defaults (slow: about 4 minutes on 2 cores)."""
    out = tmp_path_factory.mktemp("default") / "supervit-nano-digits.pt"
    result = train(TrainConfig(out=str(out)))
    return out, result


TWO_PRESETS = ["r32-k1", "r16-k0.5"]


@pytest.fixture(scope="session")
def built(quick_checkpoint, tmp_path_factory):
    """An x86-cpu bundle of two presets built from the quick checkpoint: (path, build log, base dir)."""
    from edgevit.builder import BuildOptions, build

    base = tmp_path_factory.mktemp("build")
    logs = []
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(quick_checkpoint), presets=TWO_PRESETS,
                             out=str(base / "bundle"), cache_dir=str(base / "cache"), log=logs.append))
    return out, logs, base
