import pytest
import yaml
from click.testing import CliRunner

from edgevit.cli import cli
from edgevit.errors import EdgevitError
from edgevit.build.profiles import list_profiles, load_profile, parse_profile


def test_shipped_profiles_load_and_resolve_defaults():
    assert {"x86-cpu", "jetson-orin", "jetson-orin-nano", "desktop-gpu"} <= set(list_profiles())
    p = load_profile("x86-cpu")
    assert p.backends == ["openvino", "onnxruntime"] and p.precision == ["int8", "bf16", "fp32"]
    assert p.openvino["inference_precision"] == "f32"
    assert p.accuracy == {"max_top1_drop": 0.01, "min_agreement": 0.99, "confidence": 0.95}
    orin = load_profile("jetson-orin")
    assert orin.backend == "tensorrt" and orin.device["dla_cores"] == 2 and orin.tensorrt["version"] == "10"
    assert load_profile("desktop-gpu").tensorrt["hardware_compatibility"] == "ampere_plus"


def _write(tmp_path, text, name="board.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "name: board\ndevice: {kind: cpu}\nbackend: onnxruntime\n"


def test_user_file_by_path(tmp_path):
    p = load_profile(str(_write(tmp_path, BASE + "precision: fp32\n")))
    assert p.name == "board" and p.precision == ["fp32"] and p.calibration["samples"] == 512


def test_misspelled_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, BASE + "accuracy: {max_top1_dorp: 0.02}\n")
    with pytest.raises(EdgevitError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert str(path) in msg and "accuracy" in msg and "max_top1_dorp" in msg and "did you mean 'max_top1_drop'" in msg


@pytest.mark.parametrize("extra,needle", [
    ("precision: int4\n", "precision: 'int4' is not allowed; expected one of int8, bf16, fp16, fp32"),
    ("batch: 0\n", "batch: 0 is out of range"),
    ("batch: two\n", "batch: expected integer, got 'two'"),
    ("fallbacks: [onnxruntime]\n", "lists the primary backend"),
    ("fallbacks: [tflite]\n", "fallbacks[0]: 'tflite' is not allowed"),
    ("accuracy: {max_top1_drop: 1.5}\n", "accuracy.max_top1_drop: 1.5 is out of range"),
    ("tensorrt: {timing_cache: 3}\n", "tensorrt.timing_cache: expected true/false, got 3"),
    ("runtime: {battery_thresholds: [120]}\n", "runtime.battery_thresholds[0]: 120 is outside 0..100"),
    ("runtime: {latency_deadline_ms: 0}\n", "runtime.latency_deadline_ms: 0 is out of range"),
    ("runtime: 0\n", "runtime: expected a mapping of keys"),
    ("accuracy: []\n", "accuracy: expected a mapping of keys"),
])
def test_bad_values_name_field_and_allowed(tmp_path, extra, needle):
    with pytest.raises(EdgevitError, match=None) as e:
        load_profile(str(_write(tmp_path, BASE + extra)))
    assert needle in str(e.value) and "board.yaml" in str(e.value)


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(EdgevitError, match="backend: required key is missing"):
        load_profile(str(_write(tmp_path, "name: x\ndevice: {kind: cpu}\n")))
    with pytest.raises(EdgevitError, match=r"not valid YAML at line 2"):
        load_profile(str(_write(tmp_path, "name: x\n  bad: [\n", "y.yaml")))
    with pytest.raises(EdgevitError, match="tensorrt needs device.kind gpu or jetson"):
        parse_profile(yaml.safe_load("name: x\ndevice: {kind: cpu}\nbackend: tensorrt\n"), "inline")


def test_unknown_target_suggests():
    with pytest.raises(EdgevitError, match="unknown target 'x86_cpu' \\(did you mean 'x86-cpu'\\?\\)"):
        load_profile("x86_cpu")


def test_cli_profiles_list_and_show(tmp_path):
    r = CliRunner().invoke(cli, ["profiles"])
    assert r.exit_code == 0 and "jetson-orin-nano" in r.output and "openvino" in r.output
    r = CliRunner().invoke(cli, ["profiles", "show", "x86-cpu"])
    shown = yaml.safe_load(r.output)
    assert shown["openvino"]["inference_precision"] == "f32" and shown["calibration"]["method"] == "minmax"
    r = CliRunner().invoke(cli, ["build", "--target", str(_write(tmp_path, BASE + "oops: 1\n"))])
    assert r.exit_code == 2 and "unknown key 'oops'" in r.output and "board.yaml" in r.output


def test_profiles_are_found_in_a_wheel_install_without_a_checkout(tmp_path, monkeypatch):
    import sys

    import edgevit.build.profiles as profiles

    share = tmp_path / "share" / "edgevit" / "profiles"
    share.mkdir(parents=True)
    (share / "x86-cpu.yaml").write_text((profiles.PROFILE_DIR / "x86-cpu.yaml").read_text())
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setattr(profiles, "__file__", str(tmp_path / "site-packages" / "edgevit" / "build" / "profiles.py"))
    assert profiles._profile_dir() == share
    assert load_profile("x86-cpu", profiles._profile_dir()).name == "x86-cpu"


def test_precision_is_an_ordered_preference(tmp_path):
    p = load_profile(str(_write(tmp_path, BASE + "precision: [int8, bf16, fp32]\n")))
    assert p.precision == ["int8", "bf16", "fp32"] and p.preferred == "int8"
    with pytest.raises(EdgevitError, match=r"precision\[1\]: 'int4' is not allowed"):
        load_profile(str(_write(tmp_path, BASE + "precision: [int8, int4]\n")))
    with pytest.raises(EdgevitError, match="repeats a value"):
        load_profile(str(_write(tmp_path, BASE + "precision: [int8, int8]\n")))
    with pytest.raises(EdgevitError, match="an empty list"):
        load_profile(str(_write(tmp_path, BASE + "precision: []\n")))


def test_command_line_overrides_are_validated_like_the_file(tmp_path):
    p = load_profile(str(_write(tmp_path, BASE)))
    q = p.with_overrides(precision=["fp32"], **{"accuracy.min_agreement": 0.5, "calibration.samples": 8,
                                                "accuracy.max_top1_drop": None})
    assert q.precision == ["fp32"] and q.accuracy["min_agreement"] == 0.5 and q.calibration["samples"] == 8
    assert q.accuracy["max_top1_drop"] == p.accuracy["max_top1_drop"] and p.precision == ["int8", "fp32"]
    with pytest.raises(EdgevitError, match=r"command-line overrides\): accuracy.min_agreement: 2 is out of range"):
        p.with_overrides(**{"accuracy.min_agreement": 2})
