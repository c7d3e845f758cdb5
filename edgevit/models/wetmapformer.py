"""WetMapFormer (Jamali, Roy, Ghamisi, JAG 2023): CNN + local-window attention for per-pixel wetland mapping.

Each labelled pixel of a multispectral/SAR scene is classified from the 8x8 patch around it (the pixel at
(4, 4)). A band-wise 3-D CNN feature extractor feeds a two-stage UniFormer-style backbone: a convolution
block on a 2x2 map, then a transformer block whose attention is local-window (neighbourhood) attention.

Two variants (shared/models/wetmapformer.md §0): ``designed`` (default: window 3, MLP ratio 4) and
``released``, what the notebook's positional-argument slip actually built (window 1, so attention is the
linear map W_o(W_v x + b_v) + b_o, and every MLP a learned constant vector of size C). Bands and classes are
parameters (defaults 16 and 7). The per-band normalisation (mean/std over training patches, padding zeros
included) lives inside the model as buffers, so it travels with the weights and the exported graph.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from edgevit.errors import EdgevitError
from edgevit.models.presets import Preset, PresetLookup
from edgevit.models.base import Family, register_family
from edgevit.models.registry import checked_options, register_model

PATCH = 8
VARIANTS = {"designed": {"kernel": 3, "mlp_ratio": 4}, "released": {"kernel": 1, "mlp_ratio": 0}}


def _keras_bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)      # Keras defaults: eps 1e-3, momentum 0.99


class SeparableConv(nn.Module):
    """Keras SeparableConv2D: depthwise 3x3 without bias, then pointwise 1x1 with bias; "same" padding."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class FeatureExtractor(nn.Module):
    """Spec §2 rows 1-13 (FExtractor)."""

    def __init__(self, bands: int):
        super().__init__()
        self.conv3d_1 = nn.Conv3d(1, 16, (1, 1, 3), padding=(0, 0, 1))
        self.conv3d_2 = nn.Conv3d(16, 32, (1, 1, 5), padding=(0, 0, 2))
        self.bn0 = _keras_bn(32 * bands)
        self.sep1 = SeparableConv(32 * bands, 32)
        self.sep2 = SeparableConv(32, 32)
        self.residual = nn.Conv2d(32 * bands, 32, 3, stride=2)
        self.up1 = nn.ConvTranspose2d(32, 32, 3, padding=1)
        self.bn1 = _keras_bn(32)
        self.up2 = nn.ConvTranspose2d(32, 32, 3, padding=1)
        self.bn2 = _keras_bn(32)
        self.skip = nn.Conv2d(32, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, bands, H, W = x.shape
        t = x.permute(0, 2, 3, 1).unsqueeze(1)                               # B, 1, H, W, bands
        t = F.relu(self.conv3d_2(F.relu(self.conv3d_1(t))))                  # B, 32, H, W, bands
        t = t.permute(0, 4, 1, 2, 3).reshape(B, bands * 32, H, W)            # channel = band * 32 + filter
        a0 = F.relu(self.bn0(t))
        x1 = self.sep2(F.relu(self.sep1(F.relu(a0))))
        x1 = F.max_pool2d(x1, 3, 2, ceil_mode=True)                          # TF "same", stride 2
        r = x1 + self.residual(F.pad(a0, (0, 1, 0, 1)))                      # TF "same": bottom/right padding
        u = self.bn1(self.up1(F.relu(x1)))
        u = self.bn2(self.up2(F.relu(u)))
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")     # noqa: E731
        return up(u) + self.skip(up(r))


class ChannelsLastLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=64)
def window_indices(h: int, w: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every query of an h x w map (h, w >= k): the k*k flat neighbour indices of its window (top-left
    clamped into the map, so border pixels reuse the nearest full window) and each neighbour's index into the
    (2k-1)^2 relative-position bias table. Static: built once per shape (cached: every forward asks for it),
    exported as constants."""
    nbr, rel = [], []
    for i, j in itertools.product(range(h), range(w)):
        ti, tj = min(max(i - (k - 1) // 2, 0), h - k), min(max(j - (k - 1) // 2, 0), w - k)
        cells = [(ti + a, tj + b) for a in range(k) for b in range(k)]
        nbr.append([r * w + c for r, c in cells])
        rel.append([(r - i + k - 1) * (2 * k - 1) + (c - j + k - 1) for r, c in cells])
    return torch.tensor(nbr), torch.tensor(rel)


class LocalWindowAttention(nn.Module):
    """NAT neighbourhood attention (kecam ``neighborhood_attention``) with window ``kernel``."""

    def __init__(self, dim: int, num_heads: int, kernel: int):
        super().__init__()
        self.num_heads, self.kernel = num_heads, kernel
        self.key_dim = dim // num_heads
        self.scale = self.key_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rpb = nn.Parameter(torch.zeros(num_heads, (2 * kernel - 1) ** 2))
        nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:               # x: B, C, H, W (LayerNorm'ed)
        B, C, H, W = x.shape
        k = self.kernel
        if k == 1:
            # Window 1: softmax over one element is 1, so attention is v itself (the released variant).
            v = F.linear(x.permute(0, 2, 3, 1), self.qkv.weight[2 * C:], self.qkv.bias[2 * C:])
            return self.proj(v).permute(0, 3, 1, 2)
        Hp, Wp = max(H, k), max(W, k)
        t = F.pad(x, (0, Wp - W, 0, Hp - H)).permute(0, 2, 3, 1).reshape(B, Hp * Wp, C)   # pad before qkv
        q, key, v = self.qkv(t).reshape(B, Hp * Wp, 3, self.num_heads, self.key_dim).permute(2, 0, 3, 1, 4)
        nbr, rel = window_indices(Hp, Wp, k)
        kn = key[:, :, nbr]                                             # B, h, N, k*k, d
        vn = v[:, :, nbr]
        scores = (q.unsqueeze(-2) @ kn.transpose(-2, -1)).squeeze(-2) * self.scale   # B, h, N, k*k
        scores = scores + self.rpb[:, rel]                              # h, N, k*k
        out = (scores.softmax(-1).unsqueeze(-2) @ vn).squeeze(-2)       # B, h, N, d
        out = out.transpose(1, 2).reshape(B, Hp, Wp, C)[:, :H, :W]
        return self.proj(out).permute(0, 3, 1, 2)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear over channels; ratio 0 (released) is a learned constant: Dense(C) of an empty
    tensor returns its bias, and a zero-width Linear would break exporters, so it is just that bias."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        if ratio:
            self.fc1 = nn.Linear(dim, dim * ratio)
            self.fc2 = nn.Linear(dim * ratio, dim)
        else:
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):                                               # B, C, H, W
        if not self.ratio:
            return self.bias.view(1, -1, 1, 1).expand_as(x)
        t = x.permute(0, 2, 3, 1)
        return self.fc2(F.gelu(self.fc1(t))).permute(0, 3, 1, 2)


class Block(nn.Module):
    """UniFormer-style block with WetMapFormer's wiring: out = x + ao + MLP(N2(ao)), ao = x + pos + a."""

    def __init__(self, dim: int, attention: bool, num_heads: int, kernel: int, mlp_ratio: int):
        super().__init__()
        self.attention = attention
        self.dw1 = nn.Conv2d(dim, dim, 1, groups=dim)
        self.dw3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dw5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        if attention:
            self.norm1 = ChannelsLastLayerNorm(dim, eps=1e-5)
            self.attn = LocalWindowAttention(dim, num_heads, kernel)
            self.norm2 = ChannelsLastLayerNorm(dim, eps=1e-6)
        else:
            self.norm1 = nn.BatchNorm2d(dim, eps=1e-5, momentum=0.1)
            self.pw1 = nn.Conv2d(dim, dim, 1)
            self.dw = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
            self.pw2 = nn.Conv2d(dim, dim, 1)
            self.norm2 = nn.BatchNorm2d(dim, eps=1e-5, momentum=0.1)
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, x):
        pos = x + self.dw1(x) + self.dw3(x) + self.dw5(x)
        if self.attention:
            a = self.attn(self.norm1(x))                                # on x, not pos (unlike UniFormer)
        else:
            a = self.pw2(self.dw(self.pw1(self.norm1(pos))))
        ao = x + pos + a
        return x + ao + self.mlp(self.norm2(ao))


class WetMapFormer(PresetLookup, nn.Module):
    """``forward(x)``: x is a batch of raw (unnormalised, filled) patches, (B, bands, 8, 8)."""

    family = "wetmapformer"
    input_kind = "patches"      # raw multispectral patches, not images (edgevit.data.scenes)

    def __init__(self, variant: str = "designed", bands: int = 16, num_classes: int = 7, depths=(1, 1),
                 dims=(128, 256), head_dim: int = 32, patch_size: int = PATCH):
        super().__init__()
        if variant not in VARIANTS:
            raise EdgevitError(f"WetMapFormer variant {variant!r}: expected one of {', '.join(VARIANTS)}")
        if patch_size % 8:
            raise EdgevitError(f"WetMapFormer patch_size {patch_size}: must be a multiple of 8")
        if bands < 1 or num_classes < 2:
            raise EdgevitError(f"WetMapFormer needs bands >= 1 and num_classes >= 2 (got {bands}, {num_classes})")
        kernel, ratio = VARIANTS[variant]["kernel"], VARIANTS[variant]["mlp_ratio"]
        self.config = dict(variant=variant, bands=bands, num_classes=num_classes, depths=list(depths),
                           dims=list(dims), head_dim=head_dim, patch_size=patch_size)
        self.variant_kind, self.bands, self.in_chans, self.num_classes = variant, bands, bands, num_classes
        self.img_size = self.patch_size = patch_size
        self.resolutions, self.keep_rates = [patch_size], [1.0]
        # Per-band statistics of the training patches (set by ``set_normalization``): graph constants on export.
        self.register_buffer("norm_mean", torch.zeros(bands))
        self.register_buffer("norm_std", torch.ones(bands))
        self.fe = FeatureExtractor(bands)
        self.stem = nn.Conv2d(32, dims[0], 4, 4)
        self.stem_norm = ChannelsLastLayerNorm(dims[0], eps=1e-6)
        self.stage1 = nn.Sequential(*[Block(dims[0], False, 0, kernel, ratio) for _ in range(depths[0])])
        self.down = nn.Conv2d(dims[0], dims[1], 2, 2)
        self.down_norm = ChannelsLastLayerNorm(dims[1], eps=1e-6)
        heads = dims[1] // head_dim
        self.stage2 = nn.Sequential(*[Block(dims[1], heads > 0, heads, kernel, ratio) for _ in range(depths[1])])
        self.head_norm = nn.BatchNorm2d(dims[1], eps=1e-5, momentum=0.1)
        self.head = nn.Linear(dims[1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        # Keras defaults: glorot-uniform kernels, zero biases (the LWA bias table keeps its trunc-normal).
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_normalization(self, mean, std) -> None:
        self.norm_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.norm_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-7))

    def with_resolutions(self, resolutions):
        raise EdgevitError("WetMapFormer takes 8x8 patches only; --resolutions does not apply")

    def keras_param_count(self) -> dict:
        """Counted as Keras does: trainable weights, BatchNorm moving statistics, and the input Normalization
        layer's mean, variance and sample count (2 x bands + 1)."""
        trainable = sum(p.numel() for p in self.parameters())
        moving = sum(b.numel() for n, b in self.named_buffers() if n.endswith(("running_mean", "running_var")))
        return {"trainable": trainable, "total": trainable + moving + 2 * self.bands + 1}

    # -- presets: one input size; precision and batch size are the engine's, not the model's -------------
    def check_preset(self, img_size: int, keep_rate: float = 1.0) -> None:
        if img_size != self.patch_size or keep_rate != 1.0:
            raise EdgevitError(f"WetMapFormer takes {self.patch_size}x{self.patch_size} patches only "
                               f"(got {img_size}, keep {keep_rate})")

    def flops(self, img_size: int | None = None, keep_rate: float = 1.0) -> int:
        """MACs of conv/linear/matmul layers for one patch (the spec counts 2 FLOPs per MAC)."""
        macs = 0

        def hook(mod, inp, out):
            nonlocal macs
            if isinstance(mod, (nn.Conv2d, nn.Conv3d)):
                macs += out.numel() // out.shape[0] * mod.weight[0].numel()
            elif isinstance(mod, nn.ConvTranspose2d):
                macs += inp[0].numel() // inp[0].shape[0] * mod.weight[0].numel()
            elif isinstance(mod, nn.Linear):
                macs += out.numel() // out.shape[0] * mod.in_features

        handles = [m.register_forward_hook(hook) for m in self.modules()
                   if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear))]
        training = self.training
        try:
            with torch.no_grad():
                self.eval()(torch.zeros(1, self.bands, self.patch_size, self.patch_size))
        finally:
            for h in handles:
                h.remove()
            self.train(training)
        return int(macs)

    def presets(self) -> list[Preset]:
        params = sum(p.numel() for p in self.parameters())
        return [Preset(f"p{self.patch_size}", self.patch_size, 1.0, self.flops(), params)]


    # -- forward ---------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0):
        if x.shape[1] != self.bands or x.shape[-2:] != (self.patch_size, self.patch_size):
            raise EdgevitError(f"WetMapFormer expects (B, {self.bands}, {self.patch_size}, {self.patch_size}) "
                               f"patches, got {tuple(x.shape)}")
        x = (x - self.norm_mean.view(1, -1, 1, 1)) / self.norm_std.view(1, -1, 1, 1)
        x = self.stem_norm(self.stem(self.fe(x)))
        x = self.stage1(x)
        x = self.stage2(self.down_norm(self.down(x)))
        return self.head_norm(x).mean(dim=(2, 3))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor, img_size: int | None = None, keep_rate: float = 1.0) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, img_size, keep_rate))


def _bands_of(data: str) -> dict:
    """A raster data set decides the band count (the embedded synthetic scene keeps the default)."""
    from edgevit.data.datasets import EMBEDDED
    from edgevit.data.rasters import open_raster
    from edgevit.data.scenes import scene_pairs

    if data in EMBEDDED.values():
        return {}
    return {"bands": open_raster(scene_pairs(data)[0][0]).bands}


FAMILY = register_family(Family(
    name="wetmapformer", input_kind=WetMapFormer.input_kind, data_overrides=_bands_of,
    recipe=dict(epochs=10, batch_size=128, lr=1e-3, weight_decay=0.1, warmup_epochs=1)))


def _wmf(defaults: dict, overrides: dict) -> WetMapFormer:
    checked_options(WetMapFormer, "WetMapFormer", overrides)
    return WetMapFormer(**{**defaults, **overrides})


@register_model("wetmapformer", family="wetmapformer")
def wetmapformer(**kw) -> WetMapFormer:
    """WetMapFormer_small as designed (window 3, MLP ratio 4): 1,376,816 parameters at 16 bands, 7 classes."""
    return _wmf({"variant": "designed"}, kw)


@register_model("wetmapformer-released", family="wetmapformer")
def wetmapformer_released(**kw) -> WetMapFormer:
    """WetMapFormer_small as the notebook builds it (window 1, MLPs reduced to biases): 719,728 parameters."""
    return _wmf({"variant": "released"}, kw)
