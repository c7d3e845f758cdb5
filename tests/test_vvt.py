"""VVT: the spec's sizes, the linear attention against its quadratic definition, checkpoints, the pipeline."""

import math

import numpy as np
import pytest
import torch

from edgevit.bundle import read_manifest
from edgevit.build.checkpoints import load_checkpoint
from edgevit.errors import EdgevitError
from rules import check_unmeasured_choice
from edgevit.models import create_model, model_family
from edgevit.models.vvt import (
    VicinityAttention,
    abs_clamp,
    vicinity_angles,
    vicinity_attention_quadratic,
    vicinity_core,
)

# shared/models/vvt.md §4 (exact parameter counts) and §5 (GMACs at 224 and 1024).
PAPER = {"vvt-tiny": (12_882_440, 2.98, 62.33), "vvt-small": (25_492_264, 5.59, 116.66),
         "vvt-medium": (47_907_304, 9.39, 196.03), "vvt-large": (61_848_520, 10.78, 225.14)}


@pytest.mark.parametrize("name", list(PAPER))
def test_params_and_macs_match_the_paper(name):
    params, gmacs_224, gmacs_1024 = PAPER[name]
    m = create_model(name)
    assert model_family(name) == "vvt"
    assert abs(sum(p.numel() for p in m.parameters()) / params - 1) < 0.02
    assert abs(m.flops(224) / 1e9 / gmacs_224 - 1) < 0.02
    assert abs(m.flops(1024) / 1e9 / gmacs_1024 - 1) < 0.02
    assert len(m.state_dict()) == (186 if name == "vvt-tiny" else len(m.state_dict()))


def test_cost_grows_linearly_with_pixels():
    m = create_model("vvt-tiny")
    # 1024 px has 20.9x the pixels of 224; softmax attention would grow with its square.
    ratio = m.flops(1024) / m.flops(224)
    assert 15 < ratio < (1024 / 224) ** 2 * 1.05


def test_angles_are_row_major_and_per_stage():
    a, b = vicinity_angles(2, 3)
    assert torch.allclose(a, torch.tensor([0, 0, 0, 1, 1, 1]) * math.pi / 4)
    assert torch.allclose(b, torch.tensor([0, 1, 2, 0, 1, 2]) * math.pi / 6)


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (4, 4), (3, 7), (7, 5)])
def test_linear_attention_equals_the_quadratic_formula(hw):
    H, W = hw
    g = torch.Generator().manual_seed(H * 10 + W)
    q = torch.relu(torch.randn(2, 3, H * W, 8, generator=g, dtype=torch.float64))
    k = torch.relu(torch.randn(2, 3, H * W, 8, generator=g, dtype=torch.float64))
    v = torch.randn(2, 3, H * W, 8, generator=g, dtype=torch.float64)
    exact = vicinity_attention_quadratic(q, k, v, H, W)
    assert torch.allclose(vicinity_core(q, k, v, H, W, clip=False), exact, atol=1e-12, rtol=1e-10)
    # With the reference's magnitude clipping (always on) the difference is the clamp at 1e-4 only.
    assert torch.allclose(vicinity_core(q, k, v, H, W), exact, atol=2e-4)


def test_quadratic_weights_are_the_manhattan_cosines():
    # A single pair of tokens: w = cos(pi/2 * dr/H) + cos(pi/2 * dc/W), not the cosine of the summed distance.
    H, W = 3, 4
    q = torch.zeros(1, 1, H * W, 1, dtype=torch.float64)
    k = torch.zeros_like(q)
    v = torch.zeros_like(q)
    q[..., 0, 0] = 1.0                       # token (0, 0)
    k[..., 11, 0] = 1.0                      # token (2, 3)
    v[..., 11, 0] = 5.0
    w = math.cos(math.pi / 2 * 2 / 3) + math.cos(math.pi / 2 * 3 / 4)
    out = vicinity_attention_quadratic(q, k, v, H, W)
    assert out[0, 0, 0, 0].item() == pytest.approx(5.0 * w / (w + 1e-4))


def test_module_matches_an_explicit_computation():
    torch.manual_seed(0)
    att = VicinityAttention(16, 2).double().eval()
    H, W = 3, 5
    x = torch.randn(2, H * W, 16, dtype=torch.float64)
    with torch.no_grad():
        def heads(t):
            return t.reshape(2, H * W, 2, 4).transpose(1, 2)

        core = vicinity_attention_quadratic(heads(torch.relu(att.q_proj(x))), heads(torch.relu(att.k_proj(x))),
                                            heads(att.v_proj(x)), H, W)
        a = att.out_proj(core.transpose(1, 2).reshape(2, H * W, 8))
        s = torch.sigmoid(att.se_fc[2](torch.relu(att.se_fc[0](x.mean(1, keepdim=True)))))
        ref = abs_clamp(a + a * s)
        assert torch.allclose(att(x, H, W), ref, atol=1e-3)


def test_abs_clamp_keeps_zeros_and_sign():
    t = torch.tensor([0.0, 1e-6, -1e-6, 3.0, -2e5])
    assert abs_clamp(t).tolist() == pytest.approx([0.0, 1e-4, -1e-4, 3.0, -1e4])


def test_resolutions_must_be_multiples_of_the_total_stride():
    with pytest.raises(EdgevitError, match=r"multiples of 32 \(e\.g\. 32, 64, 96"):
        create_model("vvt-tiny", resolutions=[224, 200])
    m = create_model("vvt-nano")
    with pytest.raises(EdgevitError, match=r"not one of this model's resolutions \[32, 64\]"):
        m(torch.zeros(1, 3, 64, 64), 96)
    assert [p.name for p in m.with_resolutions([32, 64, 128]).presets()] == ["r32", "r64", "r128"]
    with pytest.raises(EdgevitError, match="fixed by its trained position tables"):
        create_model("supervit-nano").with_resolutions([32, 64])


def test_any_multiple_of_32_runs_with_the_same_weights():
    m = create_model("vvt-nano").eval()
    big = m.with_resolutions([32, 64, 96])
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert big(x, 96).shape == (2, 10)
        small = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=True)
        assert torch.allclose(big(x, 64), m(small), atol=1e-5)


# -- official checkpoints -------------------------------------------------------------------------------

def test_official_layout_loads_and_the_variant_is_recognised(tmp_path):
    ref = create_model("vvt-tiny", num_classes=7)
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}   # DDP-saved, as main.py can leave it
    torch.save({"model": sd, "epoch": 299}, tmp_path / "vvt_tiny.pth")
    ck = load_checkpoint(tmp_path / "vvt_tiny.pth")
    assert ck.layout == "vvt-official" and ck.model.variant == "vvt-tiny" and ck.model.num_classes == 7
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ck.model(x), ref.eval()(x))


def test_official_layout_mismatch_is_named(tmp_path):
    sd = create_model("vvt-nano").state_dict()
    sd.pop("block3.1.attn.se_fc.2.weight")
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(EdgevitError, match="missing keys: block3.1.attn.se_fc.2.weight"):
        load_checkpoint(tmp_path / "broken.pth", model_name="vvt-nano")
    sd2 = create_model("vvt-small").state_dict()
    sd2 = {k: v for k, v in sd2.items() if not k.startswith("block3.8")}   # depths 3,3,8,3: no such variant
    torch.save(sd2, tmp_path / "odd.pth")
    with pytest.raises(EdgevitError, match=r"depths \[3, 3, 8, 3\].*match no registered variant; pass --model"):
        load_checkpoint(tmp_path / "odd.pth")


# -- through the pipeline ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_vvt(tmp_path_factory):
    from edgevit.build.train import TrainConfig, train

    out = tmp_path_factory.mktemp("vvt") / "vvt.pt"
    train(TrainConfig(model="vvt-nano", epochs=4, warmup_epochs=1, out=str(out)))
    return out


def test_vvt_build_keeps_the_attention_core_out_of_int8(quick_vvt, tmp_path):
    from edgevit.build.builder import BuildOptions, build

    out = build(BuildOptions(target="x86-cpu", checkpoint=str(quick_vvt), presets=["r32"], out=str(tmp_path / "b"),
                             cache_dir=str(tmp_path / "cache"), log=lambda m: None, measure=False))
    m = read_manifest(out).to_dict()
    assert m["model"]["family"] == "vvt" and [p["name"] for p in m["presets"]] == ["r32"]
    for e in m["presets"][0]["engines"].values():
        check_unmeasured_choice(e, m["precision"][0])
    # Whatever shipped, every INT8 recipe keeps the attention core out, checked on the quantizers themselves
    # (3 activation-by-activation matmuls x 5 blocks), so this cannot pass by falling back to FP32.
    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime, quantize_onnxruntime_dynamic
    from edgevit.backends.openvino.quantize import quantize_openvino

    onnx_path = out / m["presets"][0]["onnx"]
    calib = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    for info in (quantize_onnxruntime(onnx_path, tmp_path / "s.onnx", calib, level=0),
                 quantize_onnxruntime_dynamic(onnx_path, tmp_path / "d.onnx")):
        assert sum("attn" in n and "MatMul" in n for n in info["excluded_nodes"]) >= 3 * 5, info["tool"]
    assert len(quantize_openvino(onnx_path, tmp_path / "o.xml", calib, level=0)["ignored"]) >= 3 * 5


def test_build_refuses_a_resolution_vvt_cannot_take(quick_vvt, tmp_path):
    from click.testing import CliRunner

    from edgevit.cli import cli

    r = CliRunner().invoke(cli, ["build", "-t", "x86-cpu", "--checkpoint", str(quick_vvt), "--resolutions", "32,48",
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "[48] not allowed" in r.output and "multiples of 32" in r.output


@pytest.mark.full
def test_default_vvt_build_x86_cpu(tmp_path):
    """`edgevit build --model vvt --target x86-cpu`: top-1 >= 95% at 64 px, and every shipped engine passes the
    gate and is not slower than its FP32 candidate (which precision wins is the host's business)."""
    from edgevit.build.builder import BuildOptions, build

    out = build(BuildOptions(target="x86-cpu", model="vvt", out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"),
                             log=lambda m: None))
    m = read_manifest(out).to_dict()
    assert m["model"]["name"] == "vvt-nano"
    for p in m["presets"]:
        assert p["torch"]["top1"] >= (0.95 if p["resolution"] == 64 else 0.85), (p["name"], p["torch"]["top1"])
        for b, e in p["engines"].items():
            assert e["gate"]["passed"], (p["name"], b, e["gate"])
            fp32 = next(c for c in e["candidates"] if c["floor"])
            assert e["latency_ms"]["p50"] <= fp32["latency_ms"]["p50"], (p["name"], b, e["chosen"])
    assert np.isfinite([p["gflops"] for p in m["presets"]]).all()
