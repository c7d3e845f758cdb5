"""The device side without the workstation's libraries: what `pip install edgevit[onnxruntime]` gives."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "onnx", "onnxslim", "nncf", "sklearn", "matplotlib", "scipy", "rasterio", "openvino")

# An import hook that makes the workstation libraries unimportable, as on a device that never installed them.
HOOK = textwrap.dedent(f"""
    import sys
    BLOCKED = {BLOCKED!r}

    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a device install)", name=name)
            return None

    sys.meta_path.insert(0, _Block())
""")


def _run(tmp_path, code: str, *args):
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_load_predict_switch_and_inspect_without_workstation_libraries(built, tmp_path):
    out, _, _ = built
    code = textwrap.dedent("""
        import sys, time
        import numpy as np
        import edgevit
        from edgevit.runtime import FixedPolicy, Pacing, Switcher

        rt = edgevit.load(sys.argv[1])
        assert {p.backend for p in rt.presets} == {"onnxruntime"}, rt.presets   # openvino is not installed
        pred = rt.predict(np.zeros((8, 8, 3), np.uint8))
        assert pred.probabilities.shape == (1, 10)
        cheapest = rt.candidates[0].name
        with Switcher(rt, FixedPolicy(cheapest), sources=[], pacing=Pacing(interval_s=0.01, min_dwell_s=0)) as sw:
            deadline = time.time() + 60
            while rt.current != cheapest and time.time() < deadline:
                time.sleep(0.01)
        assert rt.current == cheapest and rt.predict(np.zeros((8, 8), np.uint8)).preset == cheapest
        from edgevit.cli import main
        sys.argv = ["edgevit", "inspect", sys.argv[1]]
        try:
            main()
        except SystemExit as e:
            assert e.code in (0, None), e.code
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "nncf", "sklearn", "matplotlib")]
        assert not bad, bad
        # nothing of the build side ran either: the device side stands alone (tests/test_structure.py)
        build = [m for m in sys.modules if m.startswith(("edgevit.build", "edgevit.models")) or m.endswith(".quantize")]
        assert not build, build
        print("DEVICE-OK")
    """)
    r = _run(tmp_path, code, str(out))
    assert r.returncode == 0 and "DEVICE-OK" in r.stdout, r.stderr[-3000:]
    assert "choice:" in r.stdout and "engines " in r.stdout


def test_a_command_whose_extra_is_missing_says_which_to_install(tmp_path):
    r = _run(tmp_path, "from edgevit.cli import main; main()", "models")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == ("Error: this needs torch, which is not installed: "
                                                 "pip install 'edgevit[build]'")


def test_plots_are_skipped_with_a_note_without_matplotlib(built, tmp_path):
    out, _, _ = built
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,battery_pct,charging,cpu_load,temperature_c\n0,90,0,0.1,40\n10,40,0,0.1,40\n")
    r = _run(tmp_path, "from edgevit.cli import main; main()", "simulate", str(out), "--trace", str(trace),
             "--policy", "battery", "--dry", "--plot", str(tmp_path / "p.png"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "plot skipped: matplotlib is not installed" in r.stderr and not (tmp_path / "p.png").exists()
