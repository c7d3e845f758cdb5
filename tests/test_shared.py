"""Shared-weight engines: every SuperViT preset in one graph, loaded once, selected by its inputs."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from edgevit.models import create_model
from edgevit.models.supervit import SharedPresets, interpolation_matrix


def test_interpolation_matrix_is_bilinear_align_corners():
    x = torch.randn(1, 3, 32, 32)
    for r in (16, 20, 24, 32, 7):
        w = torch.from_numpy(interpolation_matrix(32, r))
        ref = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=True)
        torch.testing.assert_close(w @ x @ w.T, ref, atol=1e-5, rtol=0)


def test_shared_graph_equals_every_preset_and_holds_the_weights_once(tmp_path):
    from edgevit.export import export_preset, export_shared

    torch.manual_seed(0)
    m = create_model("supervit-nano", drop_path_rate=0.1).eval()   # drop path: the exporter must not switch it on
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    report = export_shared(m, tmp_path / "shared.onnx", x)
    assert report["presets_checked"] == 12 and report["parity_max_abs"] < 1e-4
    assert not m.training

    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "shared.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    for p in m.presets():
        feeds = {k: v for k, v in SharedPresets.preset_inputs(m, p.resolution, p.keep_rate).items() if k in names}
        got = sess.run(None, {"input": x[:1], **feeds})[0]
        with torch.inference_mode():
            ref = m(torch.from_numpy(x[:1]), p.resolution, p.keep_rate).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=p.name)

    # One copy of the weights: the shared graph's initializers are those of one preset, not of twelve.
    export_preset(m, m.preset("r32-k1"), tmp_path / "one.onnx", x)
    size = lambda path: sum(t.ByteSize() for t in onnx.load(str(path)).graph.initializer)  # noqa: E731
    assert size(tmp_path / "shared.onnx") < 1.1 * size(tmp_path / "one.onnx")


def test_only_supervit_has_shared_engines(tmp_path):
    from edgevit.errors import EdgevitError
    from edgevit.export import export_shared

    vvt = create_model("vvt-nano").eval()
    with pytest.raises(EdgevitError, match="vvt-nano: its model family has no shared-weight graph"):
        export_shared(vvt, tmp_path / "s.onnx", np.zeros((1, 3, 64, 64), np.float32))


@pytest.mark.slow
def test_shared_bundle_loads_one_engine_per_backend(quick_checkpoint, tmp_path):
    import edgevit
    from edgevit.builder import BuildOptions, build
    from edgevit.bundle import read_manifest
    from edgevit.data.datasets import load_digits
    from edgevit.validate import predictions_digest

    out = build(BuildOptions(target="x86-cpu", checkpoint=str(quick_checkpoint), presets=["r32-k1", "r16-k0.5"],
                             shared_weights=True, out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"),
                             log=lambda m: None))
    m = read_manifest(out).to_dict()
    assert m["target"]["shared_weights"] is True
    defaults = {p["default"]["backend"] for p in m["presets"]}
    assert len(defaults) == 1                                   # one engine resident, not one per backend
    for b in ("openvino", "onnxruntime"):
        files = {p["engines"][b]["engine"]["file"] for p in m["presets"]}
        assert len(files) == 1 and files.pop().split("/")[-1].startswith("shared.")
        for p in m["presets"]:
            e = p["engines"][b]
            assert e["shared"] and e["gate"]["passed"] and e["engine"]["settings"]["shared"]["resolution"] == p["resolution"]
    engine_files = [f for f in m["files"] if f.startswith("engines/") and not f.endswith(".npz")]
    assert len([f for f in engine_files if f.endswith((".xml", ".onnx"))]) == 2   # one per backend
    ds = load_digits()
    images = [ds.val.image(i) for i in range(len(ds.val))]
    for b in ("openvino", "onnxruntime"):
        with edgevit.load(out, backend=b) as rt:
            a, c = (rt.runner(p.name) for p in rt.presets)
            assert a.base is c.base                              # one loaded engine serves both presets
            for p in m["presets"]:
                pred = rt.predict(images, preset=p["name"])
                assert predictions_digest(pred.indices) == p["engines"][b]["predictions_sha256"]
