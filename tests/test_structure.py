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
