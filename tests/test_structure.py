"""Rules of the code's shape that hold on every host: one-way imports, short functions, and no generic code
that knows a backend or a model family by name (each owns its knowledge: backends/<name>, models/<family>.py)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgevit"
BACKENDS = {"openvino", "onnxruntime", "tensorrt"}
FAMILIES = {"supervit", "vvt", "wetmapformer"}


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every edgevit module ``name`` imports, at module level or inside functions (lazy imports count)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # ``from edgevit import cleanup`` imports the module edgevit.cleanup, not the package's API
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def test_no_import_cycle_lazy_imports_included():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_function_over_60_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in PACKAGE.rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, long


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    if rel[0] == "backends" and len(rel) > 1:
        return rel[1].removesuffix(".py")
    if rel[0] == "models" and len(rel) > 1:
        return rel[1].removesuffix(".py")
    return ""


def test_no_backend_or_family_name_compared_outside_its_own_code():
    """``x == "openvino"``, ``"vvt" in (...)``, ``x != "tensorrt"``, ``case "supervit"``: generic code asks the
    backend or family object instead (its attributes and hooks), so a new one needs no edits there."""
    offenders = []
    for p in PACKAGE.rglob("*.py"):
        owner = _owner(p)
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            consts = [c for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
            for c in [node.left, *node.comparators]:
                if isinstance(c, (ast.Tuple, ast.List, ast.Set)):
                    consts += [e for e in c.elts if isinstance(e, ast.Constant)]
            names = {c.value for c in consts if isinstance(c.value, str)} & (BACKENDS | FAMILIES)
            if names - {owner}:
                offenders.append(f"{p.relative_to(PACKAGE.parent)}:{node.lineno} compares {sorted(names)}")
    assert not offenders, offenders


# -- parameters ---------------------------------------------------------------------------------------------

MAX_PARAMETERS = 7


def _parameters(node) -> int:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    if names and names[0] in ("self", "cls"):
        names = names[1:]
    return len(names) + bool(a.vararg) + bool(a.kwarg)


def _too_many_parameters(rel: str, source: str) -> list[str]:
    """Functions of ``source`` (``rel``: its path under the package) over ``MAX_PARAMETERS``. The CLI's
    commands take what click gives them, and a model family's constructor takes its architecture's
    hyper-parameters; everywhere else, what travels together is grouped."""
    if rel == "cli.py":
        return []
    return [f"{rel}:{n.lineno} {n.name} ({_parameters(n)} parameters)" for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and _parameters(n) > MAX_PARAMETERS
            and not (rel.startswith("models/") and n.name == "__init__")]


def test_no_function_outside_the_cli_and_model_constructors_takes_more_than_7_parameters():
    offenders = [o for p in sorted(PACKAGE.rglob("*.py"))
                 for o in _too_many_parameters(p.relative_to(PACKAGE).as_posix(), p.read_text())]
    assert not offenders, offenders


def test_the_parameter_rule_can_fail():
    source = ("def eight(a, b, c, d, e, f, g, h):\n    pass\n"
              "def seven_and_star(a, b, c, d, e, f, *rest):\n    pass\n"
              "class C:\n    def __init__(self, a, b, c, d, e, f, g, h):\n        pass\n"
              "    def method(self, a, b, c, d, e, f, g):\n        pass\n"
              "def kw(a, *, b, c, d, e, f, g, **more):\n    pass\n")
    assert sorted(o.split()[1] for o in _too_many_parameters("build/x.py", source)) == ["__init__", "eight", "kw"]
    assert sorted(o.split()[1] for o in _too_many_parameters("models/x.py", source)) == ["eight", "kw"]
    assert _too_many_parameters("cli.py", source) == []


# -- the device side stands alone ---------------------------------------------------------------------------

BUILD_SIDE = ("edgevit.build", "edgevit.models", "edgevit.data.datasets", "edgevit.data.scenes",
              "edgevit.data.splits", "edgevit.bench")
QUANTIZERS = ".quantize"        # a backend's own quantizers (edgevit.backends.<name>.quantize) are build side


def _build_side(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BUILD_SIDE) or module.endswith(QUANTIZERS)


def _device_side(modules) -> list[str]:
    """The runtime package, the backend interface and every backend's runner: what a device runs."""
    return sorted(m for m in modules if m == "edgevit.runtime" or m.startswith("edgevit.runtime.")
                  or m in ("edgevit.backends", "edgevit.backends.base", "edgevit.backends.shared")
                  or m.endswith(".runner"))


def _reaches_build_side(graph: dict, starts) -> list[str]:
    """Each path (lazy imports included) from a module of ``starts`` to a build-side module."""
    found = []
    for start in starts:
        seen, frontier = {start: [start]}, [start]
        while frontier:
            m = frontier.pop()
            for n in sorted(graph.get(m, ())):
                if n in seen:
                    continue
                seen[n] = seen[m] + [n]
                if _build_side(n):
                    found.append(" -> ".join(seen[n]))
                else:
                    frontier.append(n)
    return found


def test_the_runtime_and_the_runners_import_nothing_from_the_build_side():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    device = _device_side(modules)
    assert "edgevit.runtime.runtime" in device and "edgevit.backends.onnxruntime.runner" in device
    assert "edgevit.backends.openvino.runner" in device and "edgevit.backends.tensorrt.runner" in device
    assert not _reaches_build_side(graph, device), _reaches_build_side(graph, device)


def test_the_import_rule_can_fail():
    graph = {"edgevit.runtime.runtime": {"edgevit.bundle"}, "edgevit.bundle": {"edgevit.build.validate"},
             "edgevit.backends.x.runner": {"edgevit.backends.x.quantize"}, "edgevit.manifest": set()}
    assert _reaches_build_side(graph, _device_side(graph)) == [
        "edgevit.backends.x.runner -> edgevit.backends.x.quantize",
        "edgevit.runtime.runtime -> edgevit.bundle -> edgevit.build.validate"]
    assert _reaches_build_side({"edgevit.runtime.runtime": {"edgevit.manifest"}}, ["edgevit.runtime.runtime"]) == []


def test_an_upward_import_count_of_zero():
    """Layers, bottom up: 0 the contract both sides share (errors, files, manifest, bundle, profiles, host,
    preprocessing ...); 1 the engines' device side (the backend interface, shared-weight binding, each runner
    and what it needs); 2 the runtime; 3 the model families and the training data; 4 the build side
    (``edgevit.build`` and each backend's build parts: recipes, quantizers, the TensorRT kit and device build);
    5 the CLI and the benchmark. No module imports one of a layer above its own."""
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    layers = _layers(graph)
    up = sorted(f"{m} ({layers[m]}) -> {n} ({layers[n]})" for m in graph for n in graph[m] if layers[n] > layers[m])
    assert not up, up


def _layers(graph: dict) -> dict[str, int]:
    device = set(_device_side(graph))
    frontier = list(device)
    while frontier:                     # what the runners need inside edgevit.backends is device side too
        for n in graph.get(frontier.pop(), ()):
            if n.startswith("edgevit.backends.") and n not in device:
                device.add(n)
                frontier.append(n)

    def layer(m: str) -> int:
        if m in ("edgevit.cli", "edgevit.__main__") or m.startswith("edgevit.bench"):
            return 5
        if m.startswith("edgevit.build") or (m.startswith("edgevit.backends.") and m not in device):
            return 4
        if m.startswith("edgevit.models") or _build_side(m):
            return 3
        if m.startswith("edgevit.runtime") or m == "edgevit":
            return 2
        if m in device or m == "edgevit.host":   # host: facts about this CPU and the engine libraries here
            return 1
        return 0

    return {m: layer(m) for m in graph}


def test_the_layer_rule_can_fail():
    graph = {"edgevit.runtime.runtime": {"edgevit.backends.base"}, "edgevit.backends.base": {"edgevit.manifest"},
             "edgevit.manifest": {"edgevit.runtime.runtime"}, "edgevit.build.builder": {"edgevit.manifest"}}
    layers = _layers(graph)
    assert layers == {"edgevit.runtime.runtime": 2, "edgevit.backends.base": 1, "edgevit.manifest": 0,
                      "edgevit.build.builder": 4}
    assert [m for m in graph for n in graph[m] if layers[n] > layers[m]] == ["edgevit.manifest"]
