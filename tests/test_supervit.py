import math

import pytest
import torch
import torch.nn.functional as F

from edgevit.errors import EdgevitError
from edgevit.models import create_model, list_models
from edgevit.models.supervit import kept_tokens

# fvcore totals from shared/models/supervit.md §3.
DEIT_S_FLOPS = {
    (128, 0.5): 744_194_688, (128, 0.7): 974_573_952, (128, 1.0): 1_441_700_736,
    (160, 0.5): 1_158_081_408, (160, 0.7): 1_518_407_808, (160, 1.0): 2_273_642_880,
    (192, 0.5): 1_672_069_248, (192, 0.7): 2_198_775_168, (192, 1.0): 3_322_901_376,
    (224, 0.5): 2_303_786_880, (224, 0.7): 3_019_433_856, (224, 1.0): 4_608_940_416,
}


@pytest.fixture(scope="module")
def deit_s():
    return create_model("supervit-deit-s").eval()


def test_deit_s_flops_match_reference(deit_s):
    presets = {(p.resolution, p.keep_rate): p for p in deit_s.presets()}
    assert len(presets) == 12
    for key, ref in DEIT_S_FLOPS.items():
        assert abs(presets[key].flops - ref) / ref < 0.005, key


def test_param_counts_match_spec(deit_s):
    assert sum(p.numel() for p in deit_s.parameters()) == 22_170_088
    assert sum(p.numel() for p in deit_s.pos_embed_list.parameters()) == 195_072
    assert sum(p.numel() for p in create_model("supervit-nano").parameters()) == 690_922
    assert sum(p.numel() for p in create_model("supervit-tiny").parameters()) == 3_598_666
    assert sum(p.numel() for p in create_model("supervit-small").parameters()) == 5_378_122


def test_nano_mflops_match_spec():
    m = create_model("supervit-nano")
    got = {(p.resolution, p.keep_rate): round(p.flops / 1e6, 1) for p in m.presets()}
    assert got[(16, 0.5)] == 6.4 and got[(16, 0.7)] == 8.6 and got[(16, 1.0)] == 11.8
    assert got[(32, 0.5)] == 23.6 and got[(32, 0.7)] == 31.7 and got[(32, 1.0)] == 48.7


def test_presets_sorted_by_cost(deit_s):
    flops = [p.flops for p in deit_s.presets()]
    assert flops == sorted(flops)
    assert deit_s.presets()[0].name == "r128-k0.5" and deit_s.presets()[-1].name == "r224-k1"


@pytest.mark.parametrize("res,rate,expected", [
    (224, 0.5, (100, 51, 27)), (224, 0.7, (139, 99, 71)), (128, 0.5, (34, 18, 10)),
    (160, 0.7, (72, 52, 38)), (192, 0.5, (74, 38, 20)),
])
def test_token_counts_table(deit_s, res, rate, expected):
    counts = deit_s.token_counts(res, rate)
    assert (counts[3], counts[6], counts[9]) == expected
    assert counts[2] == (res // 16) ** 2 + 1


def test_forward_prunes_to_table_sizes():
    """Hooks on the MLPs see the token counts of the spec's table, at every block."""
    torch.manual_seed(0)
    m = create_model("supervit-nano").eval()
    seen = []
    hooks = [b.mlp.register_forward_hook(lambda mod, i, o: seen.append(i[0].shape[1])) for b in m.blocks]
    with torch.no_grad():
        for res, rate, after in [(16, 0.5, (10, 6, 4)), (20, 0.7, (20, 15, 12)), (24, 0.5, (20, 11, 7)),
                                 (32, 1.0, (65, 65, 65))]:
            seen.clear()
            out = m(torch.randn(2, 3, 32, 32), res, rate)
            assert out.shape == (2, 10)
            assert (seen[1], seen[3], seen[4]) == after
            assert seen == m.token_counts(res, rate)
    for h in hooks:
        h.remove()


def _reference_forward(m, x, img_size, keep_rate):
    """A plain re-implementation: explicit softmax attention, argsort-based keeping (the official code)."""
    if img_size != m.img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=True)
    x = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], 1) + m.pos_embed_list[m.resolutions.index(img_size)]
    for i, blk in enumerate(m.blocks):
        a = blk.attn
        B, N, C = x.shape
        qkv = a.qkv(blk.norm1(x)).reshape(B, N, 3, a.num_heads, C // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1)
        x = x + a.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
        if i in m.prune_at and keep_rate < 1:
            keep = math.ceil(keep_rate * N)
            score = attn[:, :, 0, 1:].mean(1)
            order = score.argsort(dim=1, descending=True)[:, :keep] + 1
            x = torch.cat([x[:, :1], torch.stack([x[b, order[b]] for b in range(B)])], 1)
        x = x + blk.mlp(blk.norm2(x))
    return m.head(m.norm(x)[:, 0])


@pytest.mark.parametrize("res,rate", [(16, 0.5), (20, 0.7), (24, 1.0), (32, 0.5), (32, 1.0)])
def test_matches_reference_implementation(res, rate):
    torch.manual_seed(1)
    m = create_model("supervit-nano").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x, res, rate), _reference_forward(m, x, res, rate), atol=1e-4, rtol=1e-4)


def test_pruning_keeps_most_attended_tokens():
    """Make CLS attend strongly to chosen patches: exactly those survive the first pruning block."""
    torch.manual_seed(0)
    m = create_model("supervit-nano").eval()
    blk = m.blocks[m.prune_at[0]]
    x = torch.randn(1, 17, 96)
    with torch.no_grad():
        _, scores = blk.attn(blk.norm1(x), cls_scores=True)
    want = set((scores[0].argsort(descending=True)[:9] + 1).tolist())
    captured = {}
    blk.mlp.register_forward_hook(lambda mod, i, o: captured.setdefault("x", i[0]))
    with torch.no_grad():
        blk(x, keep_rate=0.5)
    after_attn = x + blk.attn(blk.norm1(x))[0]
    kept = blk.norm2(after_attn)[0]
    got = captured["x"][0]
    assert got.shape[0] == kept_tokens(17, 0.5) == 10
    torch.testing.assert_close(got[0], kept[0])  # CLS first
    matched = {j for j in range(1, 17) if any(torch.allclose(got[t], kept[j], atol=1e-6) for t in range(1, 10))}
    assert matched == want


def test_full_resolution_is_not_resized():
    m = create_model("supervit-nano").eval()
    x = torch.randn(1, 3, 32, 32)
    calls = []
    orig = F.interpolate
    try:
        F.interpolate = lambda *a, **k: calls.append(1) or orig(*a, **k)
        with torch.no_grad():
            m(x, 32, 1.0)
            assert not calls
            m(x, 16, 1.0)
            assert calls
    finally:
        F.interpolate = orig


def test_unknown_preset_values_name_the_allowed_ones():
    m = create_model("supervit-nano")
    with pytest.raises(EdgevitError, match=r"img_size 28 .*\[16, 20, 24, 32\]"):
        m(torch.randn(1, 3, 32, 32), 28, 1.0)
    with pytest.raises(EdgevitError, match=r"keep_rate 0.6 .*\[0.5, 0.7, 1.0\]"):
        m(torch.randn(1, 3, 32, 32), 32, 0.6)
    with pytest.raises(EdgevitError, match="unknown preset 'r99-k1'"):
        m.preset("r99-k1")


def test_registry_lists_known_models_on_unknown_name():
    assert {"supervit-deit-s", "supervit-nano"} <= set(list_models())
    with pytest.raises(EdgevitError, match="unknown model 'vit-huge'.*supervit-deit-s"):
        create_model("vit-huge")
    with pytest.raises(EdgevitError, match="unknown SuperViT option"):
        create_model("supervit-nano", width=3)
    # A local variable of the constructor is not an option (its signature decides, not its code object).
    with pytest.raises(EdgevitError, match=r"unknown SuperViT option\(s\): r$"):
        create_model("supervit-nano", r=3)


def test_kept_tokens_uses_count_with_cls():
    assert kept_tokens(197, 0.5) == 100 and kept_tokens(197, 0.7) == 139 and kept_tokens(65, 1.0) == 65


def test_keep_rate_close_to_one_keeps_every_patch():
    """ceil(0.99 * N) is N here: every patch token is kept (only reordered by score, which attention does not
    see), so the logits are the unpruned ones, while 0.5 drops tokens and changes them."""
    m = create_model("supervit-nano", keep_rates=(0.5, 0.99, 1.0)).eval()
    assert m.token_counts(32, 0.99) == m.token_counts(32, 1.0) == [65] * 6
    assert m.token_counts(32, 0.5)[-1] < 65
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full, almost, half = m(x, 32, 1.0), m(x, 32, 0.99), m(x, 32, 0.5)
    torch.testing.assert_close(almost, full, atol=1e-5, rtol=1e-5)
    assert (half - full).abs().max() > 1e-3
