"""Shared-weight engines: every SuperViT preset in one graph, loaded once, selected by its inputs."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgevit.models import create_model
from edgevit.models.supervit import SharedPresets
from pinned import OPENVINO_CPU, ort_session


def test_the_bundle_stores_a_preset_as_arrays_and_lengths_and_the_runtime_reads_it_back(tmp_path):
    from edgevit.backends.shared import preset_feeds
    from edgevit.errors import EdgevitError
    from edgevit.build.shared import binding, write_inputs

    m = create_model("supervit-nano").eval()
    write_inputs(m, m.presets(), tmp_path)
    with np.load(tmp_path / "engines/shared-inputs.npz") as z:
        assert sorted(z.files) == sorted(f"r{r}/pos_embed" for r in m.resolutions)   # one table per resolution
    for p in m.presets():
        b = binding(m, p)
        assert b["lengths"]["size"] == p.resolution
        want = SharedPresets.preset_inputs(m, p.resolution, p.keep_rate)
        got = preset_feeds(tmp_path, b)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{p.name}/{k}")
    old = {"inputs": "engines/shared-inputs.npz", "resolution": 32, "keep": [40, 30, 20]}
    with pytest.raises(EdgevitError, match="binding of an older edgevit .*rebuild the bundle"):
        preset_feeds(tmp_path, old)
    with pytest.raises(EdgevitError, match="no arrays for group 'r99'"):
        preset_feeds(tmp_path, {**binding(m, m.presets()[0]), "arrays": "r99"})
    (tmp_path / "engines/shared-inputs.npz").unlink()
    with pytest.raises(EdgevitError, match="engines/shared-inputs.npz is missing"):
        preset_feeds(tmp_path, binding(m, m.presets()[0]))


def test_the_shared_graph_resizes_like_the_model_and_needs_no_shape_arithmetic_per_block(tmp_path):
    """One Resize whose size comes from the ``size`` input (not two matmuls on the image), and the attention's
    scale a constant, not the Sqrt of a shape: a shape computation is one more step for the engine to redo per
    request (OpenVINO measured 1.13x -> 1.04x its static engines with these two and reshape(-1))."""
    from edgevit.build.export import export_shared

    m = create_model("supervit-nano").eval()
    export_shared(m, tmp_path / "s.onnx", np.zeros((1, 3, 32, 32), np.float32))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node]
    assert ops.count("Resize") == 1 and "Sqrt" not in ops


def test_shared_graph_equals_every_preset_and_holds_the_weights_once(tmp_path):
    from edgevit.build.export import export_preset, export_shared

    torch.manual_seed(0)
    m = create_model("supervit-nano", drop_path_rate=0.1).eval()   # drop path: the exporter must not switch it on
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    report = export_shared(m, tmp_path / "shared.onnx", x)
    assert report["presets_checked"] == 12 and report["parity_max_abs"] < 1e-4
    assert not m.training

    sess = ort_session(tmp_path / "shared.onnx")
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
    from edgevit.build.export import export_shared

    vvt = create_model("vvt-nano").eval()
    with pytest.raises(EdgevitError, match="vvt-nano: its model family has no shared-weight graph"):
        export_shared(vvt, tmp_path / "s.onnx", np.zeros((1, 3, 64, 64), np.float32))



def _affine_onnx(path, weight, bias, shape=(2, 6)):
    """A graph y = x @ weight + bias, its weight an initializer of its own (as each preset's export has)."""
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], weight.shape[1]])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_openvino_branches_run_each_presets_graph_and_store_equal_weights_once(tmp_path):
    """Five graphs with equal (not the same) weight tensors and their own biases: the branches engine picks
    graph i for preset=i, and its weights file holds the weight once, where the graphs hold it five times."""
    import openvino as ov

    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.build.shared import write_sources

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 512)).astype(np.float32)          # 12 KB
    biases = [rng.standard_normal(512).astype(np.float32) for _ in range(5)]
    graphs = {f"p{i}": _affine_onnx(tmp_path / f"p{i}.onnx", w.copy(), b) for i, b in enumerate(biases)}
    report = openvino_branches.build(write_sources(graphs, tmp_path / "sources.json"), tmp_path / "e.xml")
    assert report["branches"] == list(graphs)
    assert (tmp_path / "e.bin").stat().st_size < w.nbytes + 5 * biases[0].nbytes + 1024
    compiled = ov.Core().compile_model(str(tmp_path / "e.xml"), "CPU", OPENVINO_CPU)
    assert [p.get_any_name() for p in compiled.inputs] == ["input", "preset"]
    x = rng.standard_normal((2, 6)).astype(np.float32)
    req = compiled.create_infer_request()
    for i, b in enumerate(biases):
        got = req.infer({"input": x, "preset": np.array(i, np.int64)})[0]
        np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5, err_msg=f"branch {i}")


def test_openvino_int8_branches_run_each_presets_own_quantization_over_int8_weights_stored_once(built, tmp_path):
    """``int8-branches``: each preset's graph quantized with its own activation scales, SmoothQuant off so the
    INT8 weights of every preset are equal and stored once; each branch computes what that preset's graph
    quantized alone computes (a graph read another way quantized worse: 89 % agreement at r32-k1)."""
    import openvino as ov

    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.backends.openvino.quantize import quantize_branch
    from edgevit.build.shared import write_sources
    from edgevit.data.datasets import load_digits

    out = built[0]
    graphs = {n: out / "onnx" / f"{n}.onnx" for n in ("r32-k1", "r16-k0.5")}
    ds = load_digits()
    cx, _ = ds.calib.arrays(ds.preprocess, limit=48)
    vx, _ = ds.val.arrays(ds.preprocess, limit=24)
    report = openvino_branches.build(write_sources(graphs, tmp_path / "both.json"), tmp_path / "e.xml",
                                     "int8-static", calib=cx)
    assert report["smooth_quant"] == "off" and report["branches"] == list(graphs)
    openvino_branches.build(write_sources({"r32-k1": graphs["r32-k1"]}, tmp_path / "one.json"), tmp_path / "one.xml",
                            "int8-static", calib=cx)
    assert (tmp_path / "e.bin").stat().st_size < 1.1 * (tmp_path / "one.bin").stat().st_size
    core = ov.Core()
    req = core.compile_model(str(tmp_path / "e.xml"), "CPU", OPENVINO_CPU).create_infer_request()
    for i, (name, onnx_path) in enumerate(graphs.items()):
        alone = core.compile_model(quantize_branch(core.read_model(str(onnx_path)), cx)[0], "CPU", OPENVINO_CPU)
        for x in vx:
            got = req.infer({"input": x[None], "preset": np.array(i, np.int64)})[0]
            np.testing.assert_allclose(got, alone(x[None])[0], atol=0.02, err_msg=name)


def test_openvino_int8_graph_quantizes_the_one_graph_on_every_presets_inputs(quick_checkpoint, tmp_path):
    """``int8-graph``: NNCF INT8 of the one dynamic-shape graph, the calibration images going through every
    preset in turn, so one set of activation scales serves them all: the INT8 weights are stored once and
    every preset agrees with the FP32 graph. The graph and inputs it lists are checked against their digests
    (they key the engine cache): changed since, they are refused."""
    import openvino as ov

    from edgevit.backends.openvino.quantize import MIN_IMAGES_PER_PRESET, quantize_graph
    from edgevit.backends.shared import preset_feeds
    from edgevit.build.checkpoints import load_checkpoint
    from edgevit.build.export import export_shared
    from edgevit.build.shared import binding, write_graph_sources, write_inputs
    from edgevit.data.datasets import load_digits
    from edgevit.errors import EdgevitError

    m = load_checkpoint(quick_checkpoint).model.eval()
    ds = load_digits()
    cx, _ = ds.calib.arrays(ds.preprocess, limit=16)
    vx, _ = ds.val.arrays(ds.preprocess, limit=64)
    export_shared(m, tmp_path / "shared.onnx", cx[:4])
    write_inputs(m, m.presets(), tmp_path)
    src = write_graph_sources(tmp_path / "shared.onnx", tmp_path, m, m.presets(), tmp_path / "graph.json")
    report = quantize_graph(src, tmp_path / "q.xml", cx)
    assert report["calibrated_on"] == [p.name for p in m.presets()]
    assert report["samples"] == MIN_IMAGES_PER_PRESET * len(m.presets())   # 16 images: each preset sees 4
    core = ov.Core()
    assert sum(op.get_type_name() == "FakeQuantize" for op in core.read_model(str(tmp_path / "q.xml")).get_ops()) > 10
    assert (tmp_path / "q.bin").stat().st_size < 0.5 * (tmp_path / "shared.onnx").stat().st_size   # INT8, once
    q = core.compile_model(str(tmp_path / "q.xml"), "CPU", OPENVINO_CPU).create_infer_request()
    f = core.compile_model(str(tmp_path / "shared.onnx"), "CPU", OPENVINO_CPU).create_infer_request()
    for p in m.presets():
        feeds = preset_feeds(tmp_path, binding(m, p))
        agree = np.mean([np.argmax(q.infer({"input": x[None], **feeds})[0]) ==
                         np.argmax(f.infer({"input": x[None], **feeds})[0]) for x in vx])
        assert agree >= 0.85, f"{p.name}: {agree:.2f} agreement with the FP32 graph"
    (tmp_path / "engines/shared-inputs.npz").write_bytes(b"changed")
    with pytest.raises(EdgevitError, match="shared-inputs.npz is changed since it was listed"):
        quantize_graph(src, tmp_path / "again.xml", cx)


def test_onnxruntime_branches_engine_runs_each_presets_graph_in_one_session_with_the_weights_once(built, tmp_path):
    """Two presets' dynamic-INT8 static graphs as branches of one model: one file about one preset's size,
    the weights in the outer graph only, each preset's binding giving that preset's own engine's logits, and
    a branch outside the tree refused rather than served by the last one."""
    from edgevit.backends.base import EngineSpec
    from edgevit.backends.onnxruntime import BACKEND as ORT
    from edgevit.build.profiles import load_profile
    from edgevit.build.shared import binding, write_inputs, write_sources
    from edgevit.errors import EdgevitError

    out, _, _ = built
    profile = load_profile("x86-cpu")
    m = create_model("supervit-nano")
    presets = [p for p in m.presets() if p.name in ("r32-k1", "r16-k0.5")]
    sources = write_sources({p.name: out / "onnx" / f"{p.name}.onnx" for p in presets}, tmp_path / "sources.json")
    cand = next(c for c in ORT.shared_recipes("int8", profile) if c.id == "int8-dynamic-branches")
    bundle = tmp_path / "bundle"
    spec = ORT.compile(sources, bundle, "shared", cand, None, profile)
    write_inputs(m, presets, bundle)
    assert spec.file == "engines/onnxruntime/shared.int8-dynamic-branches.onnx"
    assert spec.quantization["branches"] == [p.name for p in presets]
    own = {p.name: ORT.compile(out / "onnx" / f"{p.name}.onnx", tmp_path / "own", p.name,
                               next(c for c in ORT.recipes("int8", profile) if c.id == "int8-dynamic"), None, profile)
           for p in presets}
    assert (bundle / spec.file).stat().st_size < 1.1 * (tmp_path / "own" / own["r32-k1"].file).stat().st_size
    g = onnx.load(str(bundle / spec.file)).graph
    ifs = [n for n in g.node if n.op_type == "If"]
    assert len(ifs) == 2 and g.initializer
    assert all(not a.g.initializer for n in ifs for a in n.attribute)         # branches read the outer weights
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for i, p in enumerate(presets):
        runner = ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings,
                                                                               "shared": binding(m, p, i)}}))
        ref = ORT.load(tmp_path / "own", own[p.name])
        np.testing.assert_allclose(runner.infer(x), ref.infer(x), rtol=1e-3, atol=1e-3, err_msg=p.name)
    for bad in (2, -1, "0"):
        with pytest.raises(EdgevitError, match="is not one of its 2 branches"):
            ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": {
                **spec.settings, "shared": {**binding(m, presets[0], 0), "branch": bad}}}))


def test_onnxruntime_branches_sit_one_level_below_the_weights_where_onnx_runtime_prepacks_them(built, tmp_path):
    """Three branches (the third a copy of the first under another name): each preset's graph is the
    then-branch of an If of the outer graph, the graph that holds the weights (ONNX Runtime prepacks an
    outer-scope weight only for a direct child; a tree of Ifs ran unpacked), and the session gives each
    preset's own logits for its index and an empty batch for an index outside the engine."""
    from edgevit.backends.onnxruntime import branches
    from edgevit.backends.onnxruntime.quantize import quantize_onnxruntime_dynamic
    from edgevit.build.shared import write_sources

    out, _, _ = built
    graphs = {"a": out / "onnx" / "r32-k1.onnx", "b": out / "onnx" / "r16-k0.5.onnx", "c": out / "onnx" / "r32-k1.onnx"}
    report = branches.build(write_sources(graphs, tmp_path / "sources.json"), tmp_path / "e.onnx")
    assert report["branches"] == ["a", "b", "c"]
    g = onnx.load(str(tmp_path / "e.onnx")).graph
    ifs = [n for n in g.node if n.op_type == "If"]
    assert len(ifs) == 3 and g.initializer
    for n in ifs:
        then = next(a.g for a in n.attribute if a.name == "then_branch")
        assert not then.initializer and not any(m.op_type in ("If", "Loop", "Scan") for m in then.node)
        assert any(m.op_type == "DynamicQuantizeLinear" for m in then.node)   # the preset's own quantized graph
    session = ort_session(tmp_path / "e.onnx")
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for i, (name, path) in enumerate(graphs.items()):
        quantize_onnxruntime_dynamic(path, tmp_path / f"{name}.onnx")
        alone = ort_session(tmp_path / f"{name}.onnx")
        got = session.run(None, {"input": x, "preset": np.array(i, np.int64)})[0]
        np.testing.assert_allclose(got, alone.run(None, {"input": x})[0], rtol=1e-3, atol=1e-3, err_msg=name)
    assert session.run(None, {"input": x, "preset": np.array(3, np.int64)})[0].shape[0] == 0


def test_onnxruntime_presets_engine_runs_each_presets_static_graph_over_one_weights_file(built, tmp_path):
    """Two presets' static graphs: each quantized as ONNX Runtime's dynamic INT8 engine of that preset, their
    equal weights written once, and each preset's session gives that preset's own engine's logits."""
    from edgevit.backends.base import EngineSpec
    from edgevit.backends.onnxruntime import BACKEND as ORT
    from edgevit.build.profiles import load_profile
    from edgevit.build.shared import write_sources
    from edgevit.errors import EdgevitError

    out, _, _ = built
    profile = load_profile("x86-cpu")
    names = ["r32-k1", "r16-k0.5"]
    sources = write_sources({n: out / "onnx" / f"{n}.onnx" for n in names}, tmp_path / "sources.json")
    cand = next(c for c in ORT.shared_recipes("int8", profile) if c.id == "int8-dynamic-presets")
    bundle = tmp_path / "bundle"
    spec = ORT.compile(sources, bundle, "shared", cand, None, profile)
    assert spec.file == "engines/onnxruntime/shared.int8-dynamic-presets.weights.bin"
    assert spec.extra_files == spec.settings["graphs"] and len(spec.extra_files) == 2
    own = {n: ORT.compile(out / "onnx" / f"{n}.onnx", tmp_path / "own", n,
                          next(c for c in ORT.recipes("int8", profile) if c.id == "int8-dynamic"), None, profile)
           for n in names}
    one = (tmp_path / "own" / own["r32-k1"].file).stat().st_size
    assert (bundle / spec.file).stat().st_size < 1.1 * one                    # the weights once, not twice
    for rel in spec.extra_files:
        g = onnx.load(str(bundle / rel), load_external_data=False)
        big = [t for t in g.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert big and all({e.key: e.value for e in t.external_data}["location"] == Path(spec.file).name for t in big)
        assert (bundle / rel).stat().st_size < 0.25 * one                       # small tensors stay inline
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for i, n in enumerate(names):
        runner = ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "shared": {"branch": i}}}))
        ref = ORT.load(tmp_path / "own", own[n])
        np.testing.assert_allclose(runner.infer(x), ref.infer(x), rtol=1e-4, atol=1e-4, err_msg=n)
    for bad in ({"branch": 2}, {"branch": "0"}, {}):
        with pytest.raises(EdgevitError, match="names no graph of this engine's files"):
            ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "shared": bad}}))
    outside = {**spec.settings, "graphs": ["../../elsewhere.onnx", spec.settings["graphs"][1]], "shared": {"branch": 0}}
    with pytest.raises(EdgevitError, match="names no graph"):
        ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": outside}))
    g = onnx.load(str(bundle / spec.extra_files[0]), load_external_data=False)   # weights pointing out of the bundle
    for t in g.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../../outside.bin"
    (bundle / spec.extra_files[0]).write_bytes(g.SerializeToString())
    with pytest.raises(EdgevitError, match="cannot load it with its weights file"):
        ORT.load(bundle, EngineSpec(**{**spec.to_dict(), "settings": {**spec.settings, "shared": {"branch": 0}}}))


def test_openvino_branches_keep_the_activation_out_of_the_matmul_so_its_weights_pack_once(tmp_path):
    """An activation fused into an FP32 matmul takes it off the weight packing that is shared whatever the
    token count: the FP32 branches build keeps them apart (the output unchanged), the INT8-weights one not."""
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.errors import EdgevitError
    from edgevit.build.shared import write_sources

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    # a reshape between the bias add and the activation, as some exports have: the plugin moves the
    # activation up through it, then fuses
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["pre"]),
         helper.make_node("Reshape", ["pre", "shape"], ["pre3"]),
         helper.make_node("Relu", ["pre3"], ["act"]), helper.make_node("MatMul", ["act", "w2"], ["logits"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [4, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([2, 2, 64], np.int64), "shape"),
         numpy_helper.from_array(np.ones((64, 3), np.float32), "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "p.onnx"))
    report = openvino_branches.build(write_sources({"p": tmp_path / "p.onnx"}, tmp_path / "s.json"),
                                     tmp_path / "e.xml")
    assert report["activations_unfused"] == 1
    compiled = ov.Core().compile_model(str(tmp_path / "e.xml"), "CPU", OPENVINO_CPU)
    info = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
    layers = [(i["layerType"].astype(str), i["originalLayersNames"].astype(str).split(",")) for i in info]
    fcs = [names for kind, names in layers if kind == "FullyConnected"]
    assert len(fcs) == 2 and all(len(names) == 1 for names in fcs), layers      # nothing fused into either
    x = rng.standard_normal((4, 6)).astype(np.float32)
    got = compiled.create_infer_request().infer({"input": x, "preset": np.array(0, np.int64)})[0]
    want = np.maximum(x @ w + b, 0).reshape(2, 2, 64) @ np.ones((64, 3), np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert openvino_branches.build(tmp_path / "s.json", tmp_path / "q.xml", weights="int8")["activations_unfused"] == 0
    assert openvino_branches.build(tmp_path / "s.json", tmp_path / "b.xml", unfuse=False)["activations_unfused"] == 0
    # a graph changed since the sources file listed it is refused, not built into another engine
    onnx.save(onnx.load(str(tmp_path / "p.onnx")), str(tmp_path / "p.onnx"), save_as_external_data=True)
    with pytest.raises(EdgevitError, match="preset p: .*p.onnx is changed since it was listed"):
        openvino_branches.build(tmp_path / "s.json", tmp_path / "c.xml")
    (tmp_path / "p.onnx").unlink()
    with pytest.raises(EdgevitError, match="preset p: .*p.onnx is missing; build again"):
        openvino_branches.build(tmp_path / "s.json", tmp_path / "c.xml")


def test_openvino_branches_refuse_graphs_of_other_shapes(tmp_path):
    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.errors import EdgevitError
    from edgevit.build.shared import write_sources

    w, b = np.ones((6, 4), np.float32), np.zeros(4, np.float32)
    graphs = {"a": _affine_onnx(tmp_path / "a.onnx", w, b), "b": _affine_onnx(tmp_path / "b.onnx", w, b, (1, 6))}
    with pytest.raises(EdgevitError, match="different shapes .*same image and output shapes"):
        openvino_branches.build(write_sources(graphs, tmp_path / "s.json"), tmp_path / "e.xml")


def test_a_branch_binding_feeds_the_index_and_an_openvino_preset_binds_it_once(tmp_path):
    """The binding's branch becomes a 0-d int64 ``preset`` input (numpy's ascontiguousarray would make it 1-d,
    which OpenVINO refuses); engines without that input ignore it."""
    from edgevit.backends.openvino import branches as openvino_branches
    from edgevit.backends.shared import SharedRunner, preset_feeds
    from edgevit.backends.openvino.runner import OvRunner
    from edgevit.build.shared import binding, write_inputs, write_sources

    m = create_model("supervit-nano").eval()
    write_inputs(m, m.presets(), tmp_path)
    feeds = preset_feeds(tmp_path, binding(m, m.presets()[3], branch=3))
    assert feeds["preset"].shape == () and feeds["preset"].dtype == np.int64 and int(feeds["preset"]) == 3
    w = np.eye(6, dtype=np.float32)
    graphs = {f"p{i}": _affine_onnx(tmp_path / f"p{i}.onnx", w, np.full(6, i, np.float32)) for i in range(4)}
    openvino_branches.build(write_sources(graphs, tmp_path / "s.json"), tmp_path / "e.xml")
    base = OvRunner(tmp_path / "e.xml", {"snippets_mode": "DISABLE"})
    x = np.zeros((2, 6), np.float32)
    for i in range(4):
        runner = SharedRunner(base, {**feeds, "preset": np.array(i, np.int64)}, None)
        np.testing.assert_array_equal(runner.infer(x), np.full((2, 6), i, np.float32))

@pytest.mark.slow
def test_shared_bundle_loads_one_engine_per_backend(quick_checkpoint, tmp_path, monkeypatch):
    import edgevit
    from edgevit.build.builder import BuildOptions, build
    from edgevit.bundle import read_manifest
    from edgevit.data.datasets import load_digits
    from edgevit.build.validate import predictions_digest

    # Not measured here: whether a shared engine holds less than the presets' own depends on the host (the
    # memory rule and both its outcomes are tested below); the engines' mechanics do not.
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(quick_checkpoint), presets=["r32-k1", "r16-k0.5"],
                             shared_weights=True, out=str(tmp_path / "b"), cache_dir=str(tmp_path / "c"),
                             log=lambda m: None, measure=False))
    m = read_manifest(out).to_dict()
    assert m["target"]["shared_weights"] is True and "memory" not in m
    defaults = {p["default"]["backend"] for p in m["presets"]}
    assert len(defaults) == 1                                   # one engine resident, not one per backend
    for b in ("openvino", "onnxruntime"):
        files = {p["engines"][b]["engine"]["file"] for p in m["presets"]}
        assert len(files) == 1 and files.pop().split("/")[-1].startswith("shared.")
        for p in m["presets"]:
            e = p["engines"][b]
            assert e["shared"] and e["gate"]["passed"] and e["engine"]["settings"]["shared"]["resolution"] == p["resolution"]
    # OpenVINO builds branches (each preset's static graph): a preset is its branch, the weights stored once
    branches = [p["engines"]["openvino"]["engine"]["settings"]["shared"]["branch"] for p in m["presets"]]
    assert branches == [0, 1]
    ov_engine = m["presets"][0]["engines"]["openvino"]
    # an FP32 engine keeps each MLP's GELU out of its matmul (the weights then pack once); others need not
    assert (ov_engine["engine"]["quantization"]["activations_unfused"] > 0) == (ov_engine["precision"] == "fp32")
    ov_bin = (out / m["presets"][0]["engines"]["openvino"]["engine"]["file"]).with_suffix(".bin")
    assert ov_bin.stat().st_size < 1.05 * (out / "onnx/shared.onnx").stat().st_size
    engine_files = [f for f in m["files"] if f.startswith("engines/") and not f.endswith(".npz")]
    assert len([f for f in engine_files if f.endswith(".xml")]) == 1
    ort_engine = m["presets"][0]["engines"]["onnxruntime"]["engine"]
    # ONNX Runtime: every preset's static graph over one weights file (the first shared recipe, and the one
    # shipped when latency is not measured), or the one dynamic-shape graph
    per_preset_graphs = "graphs" in ort_engine["settings"]
    assert len([f for f in engine_files if f.endswith(".onnx")]) == (2 if per_preset_graphs else 1)
    if per_preset_graphs:
        assert ort_engine["file"].endswith(".weights.bin") and ort_engine["extra_files"] == ort_engine["settings"]["graphs"]
    import edgevit.bundle

    hashed = []                                                  # the shared engine is checked once, not per preset
    real = edgevit.bundle.sha256_file
    monkeypatch.setattr(edgevit.bundle, "sha256_file", lambda path, *a: hashed.append(str(path)) or real(path, *a))
    edgevit.load(out, backend="onnxruntime").close()
    assert hashed and len(hashed) == len(set(hashed))
    ds = load_digits()
    images = [ds.val.image(i) for i in range(len(ds.val))]
    for b in ("openvino", "onnxruntime"):
        with edgevit.load(out, backend=b) as rt:
            a, c = (rt.runner(p.name) for p in rt.presets)
            if b == "onnxruntime" and per_preset_graphs:          # a session per preset, the weights mapped once
                assert a is not c and a.session is not c.session
            else:
                assert a.base is c.base                          # one loaded engine serves both presets
            for p in m["presets"]:
                pred = rt.predict(images, preset=p["name"])
                assert predictions_digest(pred.indices) == p["engines"][b]["predictions_sha256"]


def test_openvino_shared_candidates_follow_the_profiles_shared_graph():
    """``openvino.shared_graph`` picks what a shared OpenVINO engine is built from: each preset's static graph
    (branches, the default) or the one dynamic-shape graph; ONNX Runtime builds INT8 both ways (every
    preset's static graph over one weights file, and the one graph), its FP32 floor from the one graph."""
    from edgevit.backends.base import get_backend
    from edgevit.build.profiles import load_profile

    ov, ort = get_backend("openvino"), get_backend("onnxruntime")
    branches = load_profile("x86-cpu")
    dynamic = branches.with_overrides(**{"openvino.shared_graph": "dynamic"})
    built = [c for c in ov.candidates(branches, shared=True) if not c.skip]
    assert built and built[-1].floor
    # INT8 also from the one graph calibrated on every preset's inputs (less memory, dynamic shapes)
    assert {c.id: c.source for c in built if c.source != "presets"} == {"int8-graph": "graph-presets"}
    assert {c.source for c in ov.candidates(dynamic, shared=True)} == {"model", "graph-presets"}
    by_id = {c.id: c.source for c in ort.candidates(branches, shared=True)}
    assert by_id["int8-dynamic-presets"] == by_id["int8-dynamic-branches"] == "presets"
    assert by_id["int8-dynamic"] == by_id["fp32"] == "model"


def _scripted_memory(monkeypatch, shared_factor: dict):
    """The real fresh-process measurement, except that a shared set (several presets on one engine) is made
    to hold ``shared_factor[backend]`` x presets x the one-preset engine measured just before it."""
    from edgevit.build import resident

    real, last = resident.measure, {}

    def measure(bundle_dir, backend, specs, threads=None):
        got = real(bundle_dir, backend, specs, threads)
        if len(specs) == 1:
            last[backend] = got.total_mb
            return got
        total = shared_factor[backend] * len(specs) * last[backend]
        return resident.Resident(backend, total, {k: total / len(specs) for k in specs}, got.baseline_mb)

    monkeypatch.setattr(resident, "measure", measure)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared-cache")


def _build_with_memory(checkpoint, tmp_path, cache, monkeypatch, shared_factor: dict):
    """A measured two-preset shared build whose shared sets hold ``shared_factor`` x their presets' own."""
    from edgevit.build.builder import BuildOptions, build
    from edgevit.bundle import read_manifest

    _scripted_memory(monkeypatch, shared_factor)
    logs = []
    out = build(BuildOptions(target="x86-cpu", checkpoint=str(checkpoint), presets=["r32-k1", "r16-k0.5"],
                             shared_weights=True, out=str(tmp_path / "b"), cache_dir=str(cache), log=logs.append))
    return out, read_manifest(out).to_dict(), logs


@pytest.mark.slow
def test_a_shared_engine_holding_more_than_the_presets_own_is_not_the_default(quick_checkpoint, tmp_path,
                                                                                shared_cache, monkeypatch):
    out, m, logs = _build_with_memory(quick_checkpoint, tmp_path, shared_cache, monkeypatch,
                                      {"openvino": 1.5, "onnxruntime": 0.5})
    check = m["memory"]["shared_check"]
    assert not check["openvino"]["passed"] and check["onnxruntime"]["passed"]
    assert check["openvino"]["shared_mb"] == pytest.approx(1.5 * 2 * check["openvino"]["per_preset_mb"], abs=0.2)
    assert check["openvino"]["per_preset_mb"] > 0 and check["openvino"]["per_preset_engine"].endswith("at r32-k1")
    for p in m["presets"]:
        assert p["default"]["backend"] == "onnxruntime" and "not openvino" in p["default"]["why"]
        assert p["engines"]["openvino"]["shared"]          # still in the bundle, for backend="openvino"
    assert m["memory"]["backends"]["openvino"]["shared_weights"]
    [line] = [x for x in logs if x.startswith("[memory] openvino shared")]
    assert "3.0x one preset's own" in line and "not the default" in line
    assert any(x.startswith("shared     openvino") and x.endswith("not the default")
               for x in (out / "report.md").read_text().splitlines())


@pytest.mark.slow
def test_where_no_shared_engine_holds_less_the_build_ships_per_preset_engines(quick_checkpoint, tmp_path,
                                                                               shared_cache, monkeypatch):
    import edgevit

    out, m, logs = _build_with_memory(quick_checkpoint, tmp_path, shared_cache, monkeypatch,
                                      {"openvino": 1.2, "onnxruntime": 4.0})
    assert not any(c["passed"] for c in m["memory"]["shared_check"].values())
    assert any("building an engine per preset instead" in x for x in logs)
    for p in m["presets"]:
        assert not any(e.get("shared") for e in p["engines"].values())
        assert p["onnx"] == f"onnx/{p['name']}.onnx"
    assert not (out / "onnx/shared.onnx").exists() and not (out / "engines/shared-inputs.npz").exists()
    assert not any("shared" in f for f in m["files"])
    assert not any(b["shared_weights"] for b in m["memory"]["backends"].values())
    with edgevit.load(out) as rt:
        assert rt.predict(np.zeros((32, 32, 3), np.uint8)).indices is not None
