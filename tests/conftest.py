import pytest

from edgevit.build.train import TrainConfig, train

# Fixtures that train a model or build a bundle. A test that uses one is marked slow, so `make test-fast`
# (-m "not slow") trains and builds nothing; `_fast_tests_train_nothing` below holds the rest to it.
TRAINS_OR_BUILDS = {"quick_checkpoint", "default_training", "built", "bench_result", "orin_bundle",
                    "default_checkpoint", "quick_vvt", "wmf_bundle"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("full") or TRAINS_OR_BUILDS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_train_nothing(request, monkeypatch):
    """A test not marked slow that reaches a training step or a model export fails, naming itself."""
    if request.node.get_closest_marker("slow"):
        return
    import edgevit.build.builder
    import edgevit.build.shared
    import edgevit.build.train

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} trains or builds: mark it @pytest.mark.slow")

    for module, name in ((edgevit.build.train, "_loop"), (edgevit.build.builder, "export_cached"),
                         (edgevit.build.shared, "export_cached")):
        monkeypatch.setattr(module, name, refuse)


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
    from edgevit.build.builder import BuildOptions, build

    base = tmp_path_factory.mktemp("build")
    logs = []
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(quick_checkpoint), presets=TWO_PRESETS,
                             out=str(base / "bundle"), cache_dir=str(base / "cache"), log=logs.append))
    return out, logs, base
