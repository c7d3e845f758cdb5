import subprocess
import sys

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from edgevit.cli import cli


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, *needles):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_help_does_not_import_torch():
    code = "import sys; from edgevit.cli import cli; cli(['--help'], standalone_mode=False); " \
           "sys.exit(1 if 'torch' in sys.modules or 'onnx' in sys.modules else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train" in r.stdout and "models" in r.stdout


def test_models_lists_variants_and_presets():
    r = run("models")
    assert r.exit_code == 0 and "supervit-deit-s" in r.output and "22,170,088" in r.output
    r = run("models", "supervit-deit-s")
    assert "r224-k0.7" in r.output and "3019.4" in r.output


def test_unknown_model_lists_known_ones():
    one_line_error(run("models", "vit-huge"), "unknown model 'vit-huge'", "supervit-nano")
    one_line_error(run("train", "--model", "vit-huge"), "supervit-deit-s")


def test_missing_data_folder(tmp_path):
    one_line_error(run("train", "--data", str(tmp_path / "nowhere")), "nowhere does not exist")


def test_single_class_folder(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "only").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / "only" / "a.png")
    one_line_error(run("train", "--data", str(tmp_path)), "1 class folder", "at least 2")


def test_unreadable_image_is_named(tmp_path):
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / split / c / "x.png")
    (tmp_path / "val" / "b" / "corrupt.png").write_bytes(b"\x89PNG broken")
    one_line_error(run("train", "--data", str(tmp_path)), "corrupt.png")


def test_checkpoint_shape_mismatch_names_keys(tmp_path):
    from edgevit.models import create_model

    sd = create_model("supervit-deit-s").state_dict()
    sd["head.bias"] = torch.zeros(5)
    torch.save({"model": sd}, tmp_path / "c.pth")
    one_line_error(run("eval", str(tmp_path / "c.pth")), "head.bias (checkpoint [5], model [1000])")


def test_untrusted_pickle_names_flag(tmp_path):
    import fractions

    torch.save({"x": fractions.Fraction(1, 2)}, tmp_path / "p.pt")
    one_line_error(run("eval", str(tmp_path / "p.pt")), "--trust-checkpoint")


def test_bad_option_value_exits_2():
    r = CliRunner().invoke(cli, ["train", "--epochs", "0"])
    assert r.exit_code == 2 and "--epochs" in r.output
