"""Bad input at the edges of every command: one line, exit code 2 (or EdgevitError), nothing half-written."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edgevit.cli import cli
from edgevit.errors import EdgevitError

UNWRITABLE = "/proc/edgevit-no-such-dir"     # refused even for root: a read-only, virtual file system


def _err(args):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: ")
    return line


def test_train_out_is_checked_before_training(tmp_path):
    line = _err(["train", "--out", f"{UNWRITABLE}/m.pt", "--max-steps", "1"])
    assert "--out" in line and "cannot write" in line


@pytest.mark.slow
def test_train_out_naming_a_folder_writes_the_default_name_inside(tmp_path):
    from edgevit.build.train import TrainConfig, train

    folder = tmp_path / "runs"
    folder.mkdir()
    cfg = TrainConfig(epochs=1, warmup_epochs=0, max_steps=1, out=str(folder))
    train(cfg)
    assert (folder / "supervit-nano-digits.pt").is_file() and cfg.out == str(folder / "supervit-nano-digits.pt")


def test_build_out_is_checked_before_training(tmp_path):
    assert "cannot write" in _err(["build", "-t", "x86-cpu", "--out", f"{UNWRITABLE}/b"])
    (tmp_path / "notes.txt").write_text("x")
    assert "is not a directory" in _err(["build", "-t", "x86-cpu", "--out", str(tmp_path / "notes.txt")])


def test_checkpoints_that_are_not_checkpoints(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "is empty (0 bytes)" in _err(["eval", str(empty)])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    line = _err(["eval", str(junk), "--trust-checkpoint"])
    assert "is not a PyTorch checkpoint" in line and "--trust-checkpoint" not in line


def test_data_naming_a_file_or_nothing(tmp_path, quick_checkpoint):
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert "is a file, not a folder" in _err(["train", "--data", str(f), "--max-steps", "1",
                                              "--out", str(tmp_path / "m.pt")])
    line = _err(["build", "-t", "x86-cpu", "--checkpoint", str(quick_checkpoint), "--data", str(tmp_path / "none"),
                 "--out", str(tmp_path / "b")])
    assert line == f"Error: --data {tmp_path / 'none'} does not exist"


def test_text_files_that_are_not_utf8(tmp_path):
    prof = tmp_path / "p.yaml"
    prof.write_bytes(b"name: \xff\xfe board\n")
    assert "not UTF-8 text" in _err(["profiles", "show", str(prof)])
    from edgevit.runtime.signals import load_trace

    trace = tmp_path / "t.csv"
    trace.write_bytes(b"time_s,battery_pct\n0,\xff\n")
    with pytest.raises(EdgevitError, match="t.csv: not UTF-8 text"):
        load_trace(trace)


def test_ragged_or_out_of_range_trace_rows_name_the_line(tmp_path):
    from edgevit.runtime.signals import load_trace

    t = tmp_path / "t.csv"
    t.write_text("time_s,battery_pct,cpu_load\n0,90,0.1\n1,80\n")
    with pytest.raises(EdgevitError, match="line 3: 2 cells, the header has 3"):
        load_trace(t)
    t.write_text("time_s,battery_pct,cpu_load\n0,90,0.1,7\n")
    with pytest.raises(EdgevitError, match="line 2: 4 cells, the header has 3"):
        load_trace(t)
    t.write_text("time_s,battery_pct,cpu_load\n0,90,0.1\n1,80,140\n")
    with pytest.raises(EdgevitError, match=r"line 3, cpu_load: 140 is outside"):
        load_trace(t)


def test_unknown_signal_names_are_errors():
    from edgevit.runtime.policies import ThresholdPolicy
    from edgevit.runtime.signals import Source
    from edgevit.runtime.switcher import Switcher

    class Typo(ThresholdPolicy):
        name, signal = "typo", "batery_pct"

    with pytest.raises(EdgevitError, match="unknown signal 'batery_pct'"):
        Typo([50], 5)

    class Src(Source):
        name = "mine"

        def read(self, now):
            return {"temprature_c": 50.0}

    sw = Switcher.__new__(Switcher)
    sw.sources = [Src()]
    with pytest.raises(EdgevitError, match="source mine reports unknown signal"):
        sw.read_signals(0.0)


def test_simulate_says_when_a_policys_signal_is_absent(built, tmp_path):
    out, _, _ = built
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,cpu_load,temperature_c\n0,0.1,40\n10,0.2,41\n")
    r = CliRunner().invoke(cli, ["simulate", str(out), "--trace", str(trace), "--policy", "battery", "--dry",
                                 "--no-plot"])
    assert r.exit_code == 0, r.output
    assert "note: battery_pct is absent from the whole trace" in r.output


def test_bench_refuses_a_checkpoint_that_is_not_the_bundles(built, tmp_path):
    out, _, _ = built
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    with open(copy / "model.pt", "ab") as f:
        f.write(b"\0")
    line = _err(["bench", str(copy), "--iterations", "2", "--repeats", "1", "--no-plot",
                 "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")])
    assert "model.pt does not match its sha256" in line
    assert not (tmp_path / "r.json").exists()


def test_bench_and_map_outputs_are_checked_first(built, tmp_path):
    out, _, _ = built
    assert "cannot write" in _err(["bench", str(out), "--json", f"{UNWRITABLE}/r.json"])
    folder = tmp_path / "reports"
    folder.mkdir()
    r = CliRunner().invoke(cli, ["bench", str(out), "--iterations", "2", "--repeats", "1", "--no-plot",
                                 "--no-baseline", "--json", str(folder), "--md", str(folder)])
    assert r.exit_code == 0, r.output
    name = json.loads((out / "manifest.json").read_text())["name"]
    assert (folder / f"{name}.json").is_file() and (folder / f"{name}.md").is_file()
