"""VVT (Sun et al., "Vicinity Vision Transformer", TPAMI 2023): a four-stage pyramid ViT with linear attention.

Vicinity attention is ReLU linear attention re-weighted by a 2-D locality term, computed without ever
forming the N x N map: with alpha/beta the row/column angles of a token, cos(a_i - a_j) splits into
cos a_i cos a_j + sin a_i sin a_j, so q and k are each expanded to [x cos a, x sin a, x cos b, x sin b] and
the weight w_ij = cos(da) + cos(db) comes out of one matmul. Cost and memory grow with the pixel count.
Feature-reduction attention (FRA) runs it at C/2 channels; the feature-preserving connection (FPC) gates the
result with a squeeze-excitation of the block input. See shared/models/vvt.md; module and parameter names
follow the official code, so its checkpoints load as they are.

A preset is an input resolution: the full-size input is resized inside the model (bilinear), as SuperViT
does, so every engine of a bundle takes the same input. Resolutions must be multiples of the total stride 32.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import EdgevitError
from edgevit.models.presets import Preset, PresetLookup, preset_name
from edgevit.models.base import Family, ForeignLayout, register_family
from edgevit.models.registry import checked_options, create_model, register_model
from edgevit.models.supervit import DropPath, init_linear_and_norm, to_preset

TOTAL_STRIDE = 32
EPS = 1e-4          # the reference's denominator epsilon and lower clamp
CLAMP_MAX = 1e4     # its upper clamp


def abs_clamp(t: torch.Tensor) -> torch.Tensor:
    """sign(t) * clamp(|t|, 1e-4, 1e4): exact zeros stay zero. Written out of place so both ONNX exporters
    take it (the reference's in-place ``abs_().clamp_()`` breaks the dynamo exporter)."""
    return t.abs().clamp(EPS, CLAMP_MAX) * t.sign()


def vicinity_angles(h: int, w: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, beta of every token of an h x w map, row-major: (pi/2) * row / h and (pi/2) * col / w.

    Rows and columns come from aranges expanded to the grid (no ``index % w``), which traces to constants
    for static shapes and stays exportable for dynamic ones."""
    rows = torch.arange(h, device=device, dtype=dtype).view(h, 1).expand(h, w).reshape(-1)
    cols = torch.arange(w, device=device, dtype=dtype).view(1, w).expand(h, w).reshape(-1)
    return rows * (math.pi / 2 / h), cols * (math.pi / 2 / w)


def expand_features(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """[x cos a, x sin a, x cos b, x sin b] on the last axis (x: B, heads, N, d; angles: N)."""
    ca, sa = alpha.cos()[:, None], alpha.sin()[:, None]
    cb, sb = beta.cos()[:, None], beta.sin()[:, None]
    return torch.cat([x * ca, x * sa, x * cb, x * sb], dim=-1)


class VicinityAttention(nn.Module):
    """FRA + vicinity attention + FPC. Parameter names as the official ``Attention``."""

    def __init__(self, dim: int, num_heads: int, fr_ratio: int = 2):
        super().__init__()
        inner = dim // fr_ratio
        if inner % num_heads:
            raise EdgevitError(f"VVT: dim {dim} / fr_ratio {fr_ratio} = {inner} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, inner // num_heads
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)
        # FPC: index 0 = W1, 1 = ReLU, 2 = W2, 3 = Sigmoid, as the official se_fc Sequential.
        self.se_fc = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False),
                                   nn.Sigmoid())

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)      # B, h, N, d'

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self._heads(F.relu(self.q_proj(x)))
        k = self._heads(F.relu(self.k_proj(x)))
        v = self._heads(self.v_proj(x))
        out = vicinity_core(q, k, v, H, W)
        out = out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        a = abs_clamp(self.out_proj(out))
        gate = self.se_fc(x.mean(dim=1, keepdim=True))                               # B, 1, C
        return abs_clamp(a + a * gate)


def vicinity_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int, clip: bool = True):
    """Linear vicinity attention of ReLU'd q, k and v (B, h, N, d'), O(N d'^2) per head, never N x N."""
    c = abs_clamp if clip else (lambda t: t)
    alpha, beta = vicinity_angles(H, W, q.device, q.dtype)
    q, k = expand_features(q, alpha, beta), expand_features(k, alpha, beta)         # B, h, N, 4d'
    s = c(k.transpose(-2, -1) @ v)                                                   # B, h, 4d', d'
    z = c(1.0 / (q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1) + EPS))          # B, h, N, 1
    return c(c(q @ s) * z)


def vicinity_attention_quadratic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """The same attention formed explicitly: out_i = sum_j w_ij (q_i.k_j) v_j / (sum_j w_ij (q_i.k_j) + 1e-4),
    w_ij = cos(pi/2 (r_i - r_j)/H) + cos(pi/2 (c_i - c_j)/W); q, k already ReLU'd (B, h, N, d'). For tests."""
    alpha, beta = vicinity_angles(H, W, q.device, q.dtype)
    w = torch.cos(alpha[:, None] - alpha[None, :]) + torch.cos(beta[:, None] - beta[None, :])   # N, N
    a = (q @ k.transpose(-2, -1)) * w
    return (a @ v) / (a.sum(dim=-1, keepdim=True) + EPS)


class DWConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(B, C, H, W))
        return x.flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: fc1 -> depthwise 3x3 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), H, W)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, fr_ratio: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VicinityAttention(dim, num_heads, fr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


class OverlapPatchEmbed(nn.Module):
    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-5)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), int(H), int(W)


class VVT(PresetLookup, nn.Module):
    """``forward(x, img_size)``: x is the full-size input (``max(resolutions)`` square)."""

    family = "vvt"
    # Spec §7: the attention core sums over every token; in INT8 (and FP16) it loses too much. Kept in FP32.
    int8_keep_fp32 = ("attention",)

    def __init__(
        self,
        resolutions: Sequence[int] = (224,),
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (96, 160, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (2, 2, 2, 2),
        fr_ratios: Sequence[int] = (2, 2, 2, 2),
        drop_path_rate: float = 0.1,
    ):
        super().__init__()
        resolutions = sorted(int(r) for r in resolutions)
        check_resolutions(resolutions)
        self.config = dict(resolutions=list(resolutions), in_chans=in_chans, num_classes=num_classes,
                           embed_dims=list(embed_dims), num_heads=list(num_heads), mlp_ratios=list(mlp_ratios),
                           depths=list(depths), fr_ratios=list(fr_ratios), drop_path_rate=drop_path_rate)
        self.resolutions = list(resolutions)
        self.keep_rates = [1.0]
        self.img_size = resolutions[-1]
        self.in_chans, self.num_classes = in_chans, num_classes
        self.embed_dims, self.depths = list(embed_dims), list(depths)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2,
                                                                   in_chans if i == 0 else embed_dims[i - 1],
                                                                   embed_dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], fr_ratios[i], dpr[cur + j])
                for j in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
            cur += depths[i]
        self.head = nn.Linear(embed_dims[3], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        init_linear_and_norm(m)
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def with_resolutions(self, resolutions: Sequence[int]) -> "VVT":
        """The same weights serving other input resolutions (VVT has no position tables)."""
        model = type(self)(**{**self.config, "resolutions": list(resolutions)})
        model.load_state_dict(self.state_dict())
        model.variant = getattr(self, "variant", None)
        return model.train(self.training)

    # -- presets ---------------------------------------------------------------------------------------
    def check_preset(self, img_size: int, keep_rate: float = 1.0) -> None:
        if img_size not in self.resolutions:
            raise EdgevitError(f"img_size {img_size} is not one of this model's resolutions {self.resolutions}")
        if keep_rate != 1.0:
            raise EdgevitError(f"VVT keeps every token: keep_rate must be 1.0, not {keep_rate}")

    def presets(self) -> list[Preset]:
        params = sum(p.numel() for p in self.parameters())
        return sorted((Preset(preset_name(r), r, 1.0, self.flops(r), params) for r in self.resolutions),
                      key=lambda p: p.flops)


    def stage_sizes(self, img_size: int) -> list[tuple[int, int]]:
        h = w = img_size
        sizes = []
        for i in range(4):
            k, s = (7, 4) if i == 0 else (3, 2)
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            sizes.append((h, w))
        return sizes

    def flops(self, img_size: int, keep_rate: float = 1.0) -> int:
        """Multiply-accumulates as the paper counts them (mmcv for conv/linear + ``fra_flops``), spec §5,
        plus the resize to ``img_size`` when it differs from the full-size input."""
        total = self.in_chans * img_size * img_size * 4 if img_size != self.img_size else 0
        prev = self.in_chans
        for i, (h, w) in enumerate(self.stage_sizes(img_size)):
            n, c = h * w, self.embed_dims[i]
            k = 7 if i == 0 else 3
            total += n * c * prev * k * k                                  # overlapping patch embedding
            blk = self.__getattr__(f"block{i + 1}")[0] if self.depths[i] else None
            if blk is not None:
                inner = blk.attn.num_heads * blk.attn.head_dim
                hidden = blk.mlp.fc1.out_features
                per = 4 * n * c * inner                                     # q, k, v, out projections
                per += 2 * c * c                                            # FPC (on the pooled token)
                per += 8 * n * blk.attn.head_dim ** 2 * blk.attn.num_heads  # the linear attention core
                per += 2 * n * c * hidden + 9 * n * hidden                  # Mix-FFN
                total += per * self.depths[i]
            prev = c
        return int(total + self.embed_dims[3] * self.num_classes)

    # -- forward ---------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0):
        x, img_size = to_preset(self, x, img_size, keep_rate)
        B = x.shape[0]
        for i in range(4):
            x, H, W = getattr(self, f"patch_embed{i + 1}")(x)
            for blk in getattr(self, f"block{i + 1}"):
                x = blk(x, H, W)
            x = getattr(self, f"norm{i + 1}")(x)
            if i < 3:
                x = x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=1))

    def forward(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, img_size, keep_rate))


def check_resolutions(resolutions: Sequence[int]) -> None:
    bad = [r for r in resolutions if r <= 0 or r % TOTAL_STRIDE]
    if bad or not resolutions:
        raise EdgevitError(f"VVT resolution(s) {bad or list(resolutions)} not allowed: the four stages stride "
                           f"{TOTAL_STRIDE} in total, so resolutions must be positive multiples of {TOTAL_STRIDE} "
                           f"(e.g. 32, 64, 96, 128, 160, 192, 224, 256, 384, 512, 1024)")


def _vvt(defaults: dict, overrides: dict) -> VVT:
    checked_options(VVT, "VVT", overrides)
    return VVT(**{**defaults, **overrides})


# (depths, MLP ratios, stage-1 width) of each variant, to recognise official checkpoints without building them.
VARIANT_SHAPES = {"vvt-tiny": ((2, 2, 2, 2), (8, 8, 4, 4), 96), "vvt-small": ((3, 3, 9, 3), (8, 8, 4, 4), 96),
                  "vvt-medium": ((3, 3, 27, 3), (8, 8, 4, 4), 96), "vvt-large": ((4, 4, 36, 4), (4, 4, 4, 4), 96),
                  "vvt-nano": ((1, 1, 2, 1), (4, 4, 4, 4), 32)}


def variant_for(depths, mlp_ratios, dim0: int) -> str | None:
    for name, (d, r, c) in VARIANT_SHAPES.items():
        if list(d) == list(depths) and [float(x) for x in r] == [float(x or 0) for x in mlp_ratios] and c == dim0:
            return name
    return None


_PAPER = dict(resolutions=(224,), embed_dims=(96, 160, 320, 512), num_heads=(1, 2, 5, 8), fr_ratios=(2, 2, 2, 2),
              num_classes=1000)


# -- the family: the official checkpoint layout ------------------------------------------------------------

def _official(state: dict, model_name: str | None, path):
    """The official VVT layout (``block{i}.{j}.attn.q_proj.weight``...): the variant is read from the
    depths and MLP widths in the weights unless ``model_name`` says it."""
    if "head.weight" not in state:
        raise EdgevitError(f"checkpoint {path} looks like VVT (patch_embed1.*) but has no head.weight")
    depths = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"block{i}\.(\d+)\.", k))}
        depths.append(len(idx))
    ratios = []
    for i in range(1, 5):
        fc1, dim = state.get(f"block{i}.0.mlp.fc1.weight"), state[f"patch_embed{i}.proj.weight"].shape[0]
        ratios.append(fc1.shape[0] // dim if fc1 is not None else None)
    overrides = {"num_classes": state["head.weight"].shape[0], "in_chans": state["patch_embed1.proj.weight"].shape[1]}
    if model_name:
        return create_model(model_name, **overrides), state
    name = variant_for(depths, ratios, state["patch_embed1.proj.weight"].shape[0])
    if name is None:
        raise EdgevitError(f"checkpoint {path}: VVT weights with depths {depths} and MLP ratios {ratios} match no "
                           f"registered variant; pass --model (vvt-tiny, vvt-small, vvt-medium, vvt-large)")
    return create_model(name, **overrides), state


FAMILY = register_family(Family(
    name="vvt", default_variant="vvt-nano",
    foreign_layouts=(ForeignLayout("vvt-official", lambda state: "patch_embed1.proj.weight" in state, _official,
                                   "official VVT: patch_embed1.proj.weight, block{i}.{j}.*"),)))


def _paper(name: str, drop_path: float, kw: dict) -> VVT:
    depths, ratios, _ = VARIANT_SHAPES[name]
    return _vvt({**_PAPER, "depths": depths, "mlp_ratios": ratios, "drop_path_rate": drop_path}, kw)


@register_model("vvt-tiny", family="vvt")
def vvt_tiny(**kw) -> VVT:
    """The paper's VVT-tiny: 12.9 M params, 2.98 GMACs at 224."""
    return _paper("vvt-tiny", 0.1, kw)


@register_model("vvt-small", family="vvt")
def vvt_small(**kw) -> VVT:
    return _paper("vvt-small", 0.3, kw)


@register_model("vvt-medium", family="vvt")
def vvt_medium(**kw) -> VVT:
    return _paper("vvt-medium", 0.3, kw)


@register_model("vvt-large", family="vvt")
def vvt_large(**kw) -> VVT:
    return _paper("vvt-large", 0.3, kw)


@register_model("vvt-nano", family="vvt")
def vvt_nano(**kw) -> VVT:
    """The embedded default: every mechanism of VVT at a width for 64 px digits; presets 32 and 64 px."""
    return _vvt(dict(resolutions=(32, 64), embed_dims=(32, 64, 128, 160), num_heads=(1, 2, 4, 5),
                     mlp_ratios=(4, 4, 4, 4), depths=(1, 1, 2, 1), fr_ratios=(2, 2, 2, 2), num_classes=10,
                     drop_path_rate=0.0), kw)
