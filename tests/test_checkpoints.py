import argparse
import collections
import fractions

import pytest
import torch
import torch.nn.functional as F

from edgevit.build.checkpoints import load_checkpoint, save_checkpoint
from edgevit.models.supervit import resize_pos_table
from edgevit.errors import EdgevitError
from edgevit.models import create_model


@pytest.fixture(scope="module")
def deit_s():
    torch.manual_seed(0)
    return create_model("supervit-deit-s").eval()


def _same_outputs(a, b, res=128, rate=0.5):
    x = torch.randn(2, 3, a.img_size, a.img_size)
    with torch.no_grad():
        torch.testing.assert_close(a(x, res, rate), b(x, res, rate))


def test_our_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = create_model("supervit-nano", num_classes=7)
    path = save_checkpoint(tmp_path / "a.pt", m, classes=list("abcdefg"), preprocess={"resize": 32},
                           data={"split_hash": "0123"}, metrics={"val_top1": {"r32-k1": 0.5}})
    ck = load_checkpoint(path)
    assert ck.layout == "edgevit" and ck.model.num_classes == 7
    assert ck.meta["classes"] == list("abcdefg") and ck.meta["data"]["split_hash"] == "0123"
    _same_outputs(m.eval(), ck.model, 16, 0.5)
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed away
    with pytest.raises(EdgevitError, match="holds supervit-nano, not supervit-deit-s"):
        load_checkpoint(path, "supervit-deit-s")


def test_official_supervit_layout_with_namespace_args(tmp_path, deit_s):
    """The official DeiT training checkpoint: weights under `model`, an argparse.Namespace in `args`."""
    ckpt = {"model": deit_s.state_dict(), "optimizer": {}, "epoch": 299,
            "args": argparse.Namespace(model="super_deit_small_patch16_224", lr=1e-3)}
    torch.save(ckpt, tmp_path / "official.pth")
    ck = load_checkpoint(tmp_path / "official.pth")
    assert ck.layout == "supervit-official"
    _same_outputs(deit_s, ck.model, 160, 0.7)


def test_official_layout_with_module_prefix_and_other_class_count(tmp_path):
    torch.manual_seed(2)
    m = create_model("supervit-deit-s", num_classes=100).eval()
    sd = collections.OrderedDict((f"module.{k}", v) for k, v in m.state_dict().items())
    torch.save({"model": sd}, tmp_path / "o.pth")
    ck = load_checkpoint(tmp_path / "o.pth")
    assert ck.model.num_classes == 100
    _same_outputs(m, ck.model, 224, 1.0)


def test_timm_deit_state_dict_maps_pos_embed(tmp_path, deit_s):
    sd = {k: v for k, v in deit_s.state_dict().items() if not k.startswith("pos_embed_list")}
    sd["pos_embed"] = deit_s.pos_embed_list[3].detach().clone()
    torch.save(sd, tmp_path / "deit_small_patch16_224.pth")
    ck = load_checkpoint(tmp_path / "deit_small_patch16_224.pth")
    assert ck.layout == "timm-deit"
    tables = ck.model.pos_embed_list
    torch.testing.assert_close(tables[3], sd["pos_embed"])
    for i, g in enumerate((8, 10, 12)):
        assert tables[i].shape == (1, g * g + 1, 384)
        torch.testing.assert_close(tables[i][:, 0], sd["pos_embed"][:, 0])  # CLS row kept
        grid = sd["pos_embed"][:, 1:].reshape(1, 14, 14, 384).permute(0, 3, 1, 2)
        ref = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False, antialias=True)
        torch.testing.assert_close(tables[i][:, 1:], ref.permute(0, 2, 3, 1).reshape(1, g * g, 384))
    _same_outputs(deit_s, ck.model, 224, 0.7)  # 224 uses pos_embed unchanged


def test_resize_pos_table_identity():
    t = torch.randn(1, 1 + 36, 8)
    torch.testing.assert_close(resize_pos_table(t, 6), t, atol=1e-5, rtol=1e-5)


def test_pickle_needing_checkpoint_is_refused_with_flag_named(tmp_path, deit_s):
    # Fraction is outside the weights-only allow-list: opening the file needs real unpickling.
    torch.save({"model": deit_s.state_dict(), "extra": fractions.Fraction(1, 3)}, tmp_path / "p.pth")
    with pytest.raises(EdgevitError, match=r"needs full pickle loading.*fractions\.Fraction.*--trust-checkpoint"):
        load_checkpoint(tmp_path / "p.pth")


def test_trusted_pickle_loads(tmp_path, deit_s):
    torch.save({"model": deit_s.state_dict(), "extra": fractions.Fraction(1, 3)}, tmp_path / "p.pth")
    assert load_checkpoint(tmp_path / "p.pth", trust=True).layout == "supervit-official"


def test_shape_mismatch_names_the_keys(tmp_path):
    sd = create_model("supervit-deit-s").state_dict()
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(100, 384)
    del sd["norm.bias"]
    sd["dist_token"] = torch.zeros(1, 1, 384)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(EdgevitError) as e:
        load_checkpoint(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "blocks.0.mlp.fc1.weight (checkpoint [100, 384], model [1536, 384])" in msg
    assert "missing keys: norm.bias" in msg and "unexpected keys: dist_token" in msg


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(EdgevitError, match="x.pt is not a readable PyTorch file"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(EdgevitError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "y.pt")
    with pytest.raises(EdgevitError, match=r"in no layout edgevit reads.*official SuperViT.*timm/DeiT.*official VVT"):
        load_checkpoint(tmp_path / "y.pt")
