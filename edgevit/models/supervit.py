"""SuperViT (Lin et al., "Super Vision Transformer", IJCV 2023): one ViT, one set of weights, many presets.

A preset is (input resolution, token keep rate). The full-size input is resized inside the model
(bilinear, align_corners=True) to the preset's resolution, run through the one shared patch embedding,
and given that resolution's own learnable position table. Blocks depth/4, depth/2 and 3*depth/4 keep CLS
plus the ceil(r*N) patch tokens (N counts CLS) that the CLS query attends to most, averaged over heads.
See shared/models/supervit.md; parameter names follow the official code so its checkpoints load as-is.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import EdgevitError
from edgevit.models.presets import Preset, PresetLookup, preset_name
from edgevit.models.base import Family, ForeignLayout, register_family
from edgevit.models.registry import checked_options, create_model, register_model


def init_linear_and_norm(m: nn.Module) -> None:
    """timm's ViT initialisation of one module: truncated-normal Linear weights (std 0.02), zero biases,
    unit LayerNorms. Both SuperViT and VVT start from it."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def to_preset(model, x: torch.Tensor, img_size: int | None, keep_rate: float) -> tuple[torch.Tensor, int]:
    """The full-size input resized inside the model to the preset's resolution (bilinear, align_corners=True),
    after the preset is checked; SuperViT and VVT both start their forward here."""
    img_size = model.img_size if img_size is None else img_size
    model.check_preset(img_size, keep_rate)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=True)
    return x, img_size


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cls_scores: bool = False):
        """Returns (output, scores): scores[b, j] is the head-mean CLS attention to patch token j (or None)."""
        # The token count is left to reshape (-1) and the scale is a constant, not derived from shapes: in a
        # graph where the token count varies (SharedPresets) that is 3 shape computations fewer per block for
        # the engine to redo on every request. The same math as reshape(B, N, ...) and SDPA's default scale.
        B, _, C = x.shape
        qkv = self.qkv(x).reshape(B, -1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = self.proj(out.transpose(1, 2).reshape(B, -1, C))
        scores = None
        if cls_scores:
            # The fused kernel hides the probabilities, so the CLS row is computed on its own: O(N*D).
            row = (q[:, :, :1] * self.scale) @ k.transpose(-2, -1)          # B, h, 1, N
            scores = row.softmax(dim=-1).mean(dim=1)[:, 0, 1:]               # B, N-1
        return out, scores


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def kept_tokens(n_tokens: int, keep_rate: float) -> int:
    """Tokens after a pruning block: CLS + ceil(r * N), N counting CLS (float ceil, as the official code), and
    never more than there are: a rate near 1 keeps every patch, as the block's forward does."""
    if keep_rate >= 1.0:
        return n_tokens
    return min(n_tokens, 1 + math.ceil(keep_rate * n_tokens))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop_path, norm_eps, prunes: bool):
        super().__init__()
        self.prunes = prunes
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, keep_rate: float = 1.0) -> torch.Tensor:
        prune = self.prunes and keep_rate < 1.0
        a, scores = self.attn(self.norm1(x), cls_scores=prune)
        x = x + self.drop_path(a)
        if prune:
            k = min(kept_tokens(x.shape[1], keep_rate) - 1, x.shape[1] - 1)   # r near 1 keeps every patch
            idx = scores.topk(k, dim=1, sorted=True).indices + 1                     # skip CLS
            kept = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
            x = torch.cat([x[:, :1], kept], dim=1)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SuperViT(PresetLookup, nn.Module):
    """``forward(x, img_size, keep_rate)``: x is the full-size input (``max(resolutions)`` square)."""

    family = "supervit"

    def __init__(
        self,
        resolutions: Sequence[int] = (128, 160, 192, 224),
        keep_rates: Sequence[float] = (0.5, 0.7, 1.0),
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        resolutions = sorted(int(r) for r in resolutions)
        for r in resolutions:
            if r % patch_size:
                raise EdgevitError(f"resolution {r} is not a multiple of the patch size {patch_size}")
        self.config = dict(
            resolutions=list(resolutions), keep_rates=sorted(float(k) for k in keep_rates),
            patch_size=patch_size, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate, norm_eps=norm_eps,
        )
        self.resolutions = list(resolutions)
        self.keep_rates = self.config["keep_rates"]
        self.img_size = resolutions[-1]
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.prune_at = (depth // 4, depth // 2, 3 * depth // 4)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, (r // patch_size) ** 2 + 1, embed_dim)) for r in resolutions]
        )
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], norm_eps, prunes=i in self.prune_at)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self):
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for p in self.pos_embed_list:
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():   # pre-order, as before: the same random draws give the same weights
            init_linear_and_norm(m)

    def with_resolutions(self, resolutions: Sequence[int]) -> "SuperViT":
        if sorted(int(r) for r in resolutions) == self.resolutions:
            return self
        raise EdgevitError(f"SuperViT's resolutions are fixed by its trained position tables ({self.resolutions}); "
                           f"train a model with the resolutions you want (edgevit train --resolutions ...)")

    # -- presets ---------------------------------------------------------------------------------------
    def check_preset(self, img_size: int, keep_rate: float) -> None:
        if img_size not in self.resolutions:
            raise EdgevitError(f"img_size {img_size} is not one of this model's resolutions {self.resolutions}")
        if keep_rate not in self.keep_rates:
            raise EdgevitError(f"keep_rate {keep_rate} is not one of this model's keep rates {self.keep_rates}")

    def presets(self) -> list[Preset]:
        """Every (resolution, keep rate) pair, cheapest first."""
        total = sum(p.numel() for p in self.parameters())
        tables = [p.numel() for p in self.pos_embed_list]
        out = []
        for i, r in enumerate(self.resolutions):
            for k in self.keep_rates:
                out.append(Preset(preset_name(r, k), r, k, self.flops(r, k), total - sum(tables) + tables[i]))
        return sorted(out, key=lambda p: (p.flops, -p.resolution))


    def token_counts(self, img_size: int, keep_rate: float) -> list[int]:
        """Tokens entering each block's MLP (and so leaving the block)."""
        n = (img_size // self.patch_size) ** 2 + 1
        counts = []
        for i in range(len(self.blocks)):
            if i in self.prune_at:
                n = kept_tokens(n, keep_rate)
            counts.append(n)
        return counts

    def flops(self, img_size: int, keep_rate: float) -> int:
        """Analytic FLOPs with fvcore's conventions, as in the spec §3 (exact for DeiT-S)."""
        D = self.embed_dim
        m = self.config["mlp_ratio"]
        grid = img_size // self.patch_size
        n = grid * grid + 1
        total = self.in_chans * img_size * img_size * 4                         # bilinear resize
        total += grid * grid * D * self.in_chans * self.patch_size ** 2            # patch embedding
        for n_after in self.token_counts(img_size, keep_rate):
            total += n * 3 * D * D + 2 * n * n * D + n * D * D                     # qkv, q@k, attn@v, proj
            total += int(2 * m * n_after * D * D) + 5 * D * (n + n_after)        # MLP, two LayerNorms
            n = n_after
        return int(total + 5 * D * n + D * self.num_classes)                      # final LN, head

    # -- forward ---------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0):
        x, img_size = to_preset(self, x, img_size, keep_rate)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed_list[self.resolutions.index(img_size)]
        for blk in self.blocks:
            x = blk(x, keep_rate)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        # LayerNorm is per token, so normalising CLS alone is exact and skips the dropped work.
        return self.head(self.norm(x[:, 0]))

    def forward(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, img_size, keep_rate))


SHARED_INPUTS = ("input", "size", "pos_embed", "keep1", "keep2", "keep3")


class SharedPresets(nn.Module):
    """Every preset in one graph, so one set of weights serves them all in an engine (issue: 12 resident
    presets for the memory of one). The preset is chosen by inputs, not constants:

    * ``size``: a zero vector whose *length* is the preset's resolution R; the full-size input is resized to
      R x R by one bilinear (align_corners=True) resize whose output size is that length;
    * ``pos_embed`` (1, 1 + (R/p)^2, D): that resolution's position table;
    * ``keep1..3``: zero vectors whose lengths are the patch tokens kept by the three pruning blocks (a
      shape, so the exported TopK takes a run-time K; keep rate 1.0 keeps all, in score order, which changes
      nothing a ViT computes).

    Lengths rather than values: the engines read them from shapes, which they know before they run, and the
    bundle stores an integer, not an array (``LENGTHS``). A resize to the full size is the identity
    (align_corners=True lands every output pixel on an input pixel), so R = S needs no branch.
    """

    INPUTS = SHARED_INPUTS
    LENGTHS = ("size", "keep1", "keep2", "keep3")

    def __init__(self, model: SuperViT):
        super().__init__()
        self.model = model

    def forward(self, x, size, pos_embed, keep1, keep2, keep3):
        m = self.model
        r = size.shape[0]
        x = F.interpolate(x, size=(r, r), mode="bilinear", align_corners=True)
        x = m.patch_embed(x)
        x = torch.cat([m.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos_embed
        keeps = iter((keep1, keep2, keep3))
        for blk in m.blocks:
            if not blk.prunes:
                x = blk(x)
                continue
            a, scores = blk.attn(blk.norm1(x), cls_scores=True)
            x = x + a
            idx = scores.topk(next(keeps).shape[0], dim=1, sorted=True).indices + 1     # skip CLS
            x = torch.cat([x[:, :1], x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))], dim=1)
            x = x + blk.mlp(blk.norm2(x))
        return m.forward_head(x)

    @staticmethod
    def dynamic_axes() -> dict:
        return {"size": {0: "R"}, "pos_embed": {1: "tokens"}, "keep1": {0: "k1"}, "keep2": {0: "k2"},
                "keep3": {0: "k3"}}

    @staticmethod
    def preset_inputs(model: SuperViT, img_size: int, keep_rate: float) -> dict[str, np.ndarray]:
        """The inputs that select one preset (everything but ``input``)."""
        model.check_preset(img_size, keep_rate)
        counts = model.token_counts(img_size, keep_rate)
        kept = [counts[i] - 1 for i in model.prune_at]
        table = model.pos_embed_list[model.resolutions.index(img_size)].detach().cpu().numpy().astype(np.float32)
        return {"size": np.zeros(img_size, np.float32), "pos_embed": table,
                **{f"keep{i + 1}": np.zeros(k, np.float32) for i, k in enumerate(kept)}}


# -- the family: training step, foreign checkpoints -------------------------------------------------------

def supervit_configs(model, rng) -> list[tuple[int, float]]:
    """The four sub-networks of one step: largest unpruned, largest pruned, a smaller size unpruned and pruned."""
    full, smaller = model.resolutions[-1], model.resolutions[:-1]
    rates = [k for k in model.keep_rates if k < 1.0]
    s = rng.choice(smaller) if smaller else full
    return [(full, 1.0), (full, rng.choice(rates)), (s, 1.0), (s, rng.choice(rates))]


def supervit_step(model, x, y, rng, label_smoothing: float = 0.1) -> dict:
    """CE on (max, 1.0); KL of a pruned pass to it; CE on (s, 1.0); KL of a pruned pass at s to it.

    Each pass back-propagates at once (one graph alive at a time) and gradients add up, so the optimizer
    step minimises CE0 + KL1 + CE2 + KL3 with weights 1, as the official engine does.
    """
    net = getattr(model, "module", model)
    losses = {}
    teacher = None
    for i, (size, rate) in enumerate(supervit_configs(net, rng)):
        logits = model(x, size, rate)
        if rate == 1.0:
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            teacher = logits.detach().softmax(dim=-1)
        else:
            loss = F.kl_div(logits.log_softmax(dim=-1), teacher, reduction="batchmean")
        loss.backward()
        losses[f"{'ce' if rate == 1.0 else 'kl'}{i}"] = float(loss.detach())
    return losses


def resize_pos_table(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubic resize of a [1, 1+g*g, D] table's grid part to ``grid``x``grid``, CLS row kept (timm's way)."""
    cls, pos = table[:, :1], table[:, 1:]
    g = int(round(pos.shape[1] ** 0.5))
    if g * g != pos.shape[1]:
        raise EdgevitError(f"pos_embed has {pos.shape[1]} patch rows, not a square grid")
    pos = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2).float()
    pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([cls, pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(table.dtype)], dim=1)


def _official(state: dict, model_name, path):
    return create_model(model_name or "supervit-deit-s", **_class_and_chans(state)), state


def _timm_deit(state: dict, model_name, path):
    model = create_model(model_name or "supervit-deit-s", **_class_and_chans(state))
    state = dict(state)
    table = state.pop("pos_embed")
    for i, r in enumerate(model.resolutions):
        state[f"pos_embed_list.{i}"] = resize_pos_table(table, r // model.patch_size)
    return model, state


def _class_and_chans(state: dict) -> dict:
    return {"num_classes": state["head.weight"].shape[0], "in_chans": state["patch_embed.proj.weight"].shape[1]}


def _vit_layout(table: str):
    return lambda state: {"head.weight", "patch_embed.proj.weight", table} <= set(state)


FAMILY = register_family(Family(
    name="supervit", default_variant="supervit-nano", train_step=supervit_step, shared_presets=SharedPresets,
    foreign_layouts=(
        ForeignLayout("supervit-official", _vit_layout("pos_embed_list.0"), _official,
                      "official SuperViT: head.weight, patch_embed.proj.weight, pos_embed_list.*"),
        ForeignLayout("timm-deit", _vit_layout("pos_embed"), _timm_deit,
                      "timm/DeiT: head.weight, patch_embed.proj.weight, pos_embed"))))


def _supervit(defaults: dict, overrides: dict) -> SuperViT:
    checked_options(SuperViT, "SuperViT", overrides)
    return SuperViT(**{**defaults, **overrides})


_DEIT_S = dict(resolutions=(128, 160, 192, 224), patch_size=16, embed_dim=384, depth=12, num_heads=6,
               mlp_ratio=4.0, num_classes=1000, norm_eps=1e-6, drop_path_rate=0.1)
# Scaled down for 32x32 inputs (spec §7): grids 4/5/6/8 with patch 4, every mechanism kept.
_SMALL_INPUT = dict(resolutions=(16, 20, 24, 32), patch_size=4, num_classes=10, mlp_ratio=4.0, norm_eps=1e-6)


@register_model("supervit-deit-s", family="supervit")
def supervit_deit_s(**kw) -> SuperViT:
    """The paper's SuperViT-DeiT-S: 384 dim, 12 blocks, 6 heads, patch 16, 128/160/192/224 px."""
    return _supervit(_DEIT_S, kw)


@register_model("supervit-nano", family="supervit")
def supervit_nano(**kw) -> SuperViT:
    """The embedded default: 96 dim, 6 blocks, 3 heads, patch 4, 16/20/24/32 px, prunes at 1/3/4."""
    return _supervit({**_SMALL_INPUT, "embed_dim": 96, "depth": 6, "num_heads": 3, "drop_path_rate": 0.0}, kw)


@register_model("supervit-tiny", family="supervit")
def supervit_tiny(**kw) -> SuperViT:
    return _supervit({**_SMALL_INPUT, "embed_dim": 192, "depth": 8, "num_heads": 3, "drop_path_rate": 0.05}, kw)


@register_model("supervit-small", family="supervit")
def supervit_small(**kw) -> SuperViT:
    return _supervit({**_SMALL_INPUT, "embed_dim": 192, "depth": 12, "num_heads": 3, "drop_path_rate": 0.1}, kw)
