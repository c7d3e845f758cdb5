"""Training: the SuperViT four-pass step, AdamW + warm-up + cosine, optional DistributedDataParallel.

Under ``torchrun`` every rank samples its own sub-network configurations (as the official code does, with
its own ``random`` stream), gradients are averaged by DDP, and only rank 0 prints and writes. At the end
the ranks compare a digest of their weights, and the checkpoint records it.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from edgevit.build.checkpoints import save_checkpoint
from edgevit.data.datasets import Dataset, Split, input_kind, load_dataset
from edgevit.data.preprocess import Preprocess
from edgevit.errors import EdgevitError
from edgevit.models import create_model, family_of


@dataclass
class TrainConfig:
    model: str = "supervit-nano"
    data: str | None = None               # None: the embedded default (scikit-learn digits)
    out: str = "runs/supervit-nano.pt"
    # Defaults suit the embedded default (~4 min on 2 cores); real data sets want more epochs.
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    warmup_epochs: int = 2
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    drop_path: float | None = None        # None: the variant's default
    resolutions: list[int] | None = None  # None: the variant's presets (VVT takes any multiples of 32)
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    max_steps: int | None = None          # stop early (smoke tests); the schedule still spans all epochs


# Family recipes for the embedded defaults where the CLI's defaults (SuperViT's) do not suit: WetMapFormer
# follows its reference (AdamW lr 1e-3, weight decay 0.1 as the PyTorch equivalent of TFA's 1e-4) with fewer
# epochs and a batch of 128, enough for the synthetic scene (~2 min on 2 cores).


def recipe_for(model: str) -> dict:
    """The model family's training options that differ from TrainConfig's defaults."""
    from edgevit.models import family_of

    return dict(family_of(model).recipe)


# -- distributed ---------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        # Ranks on one CPU host share its cores; oversubscribing threads makes every rank slower.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    dist.init_process_group(backend=backend)
    return Dist(rank, world, local, device)


def weight_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- data ----------------------------------------------------------------------------------------------

class AugmentedSplit(torch.utils.data.Dataset):
    def __init__(self, split: Split, preprocess: Preprocess, seed: int):
        self.split, self.preprocess = split, preprocess
        self.rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return torch.from_numpy(self.preprocess.train(self.split.image(i), self.rng)), int(self.split.labels[i])


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)


def lr_at(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * min(1.0, t)))


# -- evaluation -----------------------------------------------------------------------------------------

@torch.inference_mode()
def evaluate_presets(model, x: np.ndarray, y: np.ndarray, presets=None, batch_size: int = 256,
                     device=None) -> dict[str, float]:
    """Top-1 per preset on preprocessed arrays."""
    model.eval()
    device = device or next(model.parameters()).device
    presets = presets if presets is not None else model.presets()
    out = {}
    for p in presets:
        correct = 0
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            correct += int((model(xb, p.resolution, p.keep_rate).argmax(-1).cpu().numpy() == y[i:i + batch_size]).sum())
        out[p.name] = correct / max(1, len(x))
    return out


def preset_table(presets, top1: dict | None = None, title: str = "validation top-1") -> str:
    """Presets as a text table; the accuracy column only when ``top1`` is given."""
    head = f"{'preset':<12} {'res':>4} {'keep':>5} {'MFLOPs':>9} {'params':>10}"
    rows = [head + (f" {title:>18}" if top1 is not None else "")]
    for p in presets:
        row = f"{p.name:<12} {p.resolution:>4} {p.keep_rate:>5.1f} {p.flops / 1e6:>9.1f} {p.params:>10,}"
        rows.append(row + (f" {100 * top1[p.name]:>17.2f}%" if top1 is not None else ""))
    return "\n".join(rows)


# -- the loop -------------------------------------------------------------------------------------------

def _log(msg: str, dist: Dist) -> None:
    if dist.main:
        print(msg, file=sys.stderr, flush=True)


def _model_and_data(cfg: TrainConfig, dataset: Dataset | None, dist: Dist):
    """The model to train (sized for the data's classes and bands) and its data set."""
    overrides = {} if cfg.drop_path is None else {"drop_path_rate": cfg.drop_path}
    if cfg.resolutions:
        overrides["resolutions"] = list(cfg.resolutions)
    overrides.update(data_overrides(cfg.model, cfg.data))
    model = create_model(cfg.model, **overrides)
    channels = getattr(model, "in_chans", 3)
    if dataset is None:
        dataset = load_dataset(cfg.data, crop=model.img_size, channels=channels, kind=input_kind(model))
    if dataset.preprocess.crop != model.img_size:
        raise EdgevitError(f"data preprocess crops {dataset.preprocess.crop} px but {cfg.model} takes {model.img_size} px")
    if model.num_classes != len(dataset.classes):
        model = create_model(cfg.model, num_classes=len(dataset.classes), **overrides)
    if input_kind(model) == "patches":   # per-band statistics of the training patches, inside the model
        model.set_normalization(dataset.preprocess.mean, dataset.preprocess.std)
    return model.to(dist.device), dataset


def _loader(cfg: TrainConfig, dataset: Dataset, dist: Dist):
    train_set = AugmentedSplit(dataset.train, dataset.preprocess, cfg.seed * 1000 + dist.rank)
    sampler = None
    if dist.world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(
            train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed, drop_last=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True,
        num_workers=cfg.workers, worker_init_fn=_worker_init if cfg.workers else None, generator=gen)
    if len(loader) == 0:
        raise EdgevitError(f"the training split has {len(train_set)} images, fewer than one batch of {cfg.batch_size}")
    return loader, sampler


def _optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        # As the official code ends up doing: 1-D params and cls_token undecayed, position tables decayed.
        (no_decay if p.ndim <= 1 or n == "cls_token" else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def _loop(cfg: TrainConfig, model, net, loader, sampler, opt, dist: Dist) -> tuple[int, dict]:
    """The epochs; returns the steps taken and the last step's losses."""
    from tqdm import tqdm

    step_fn = family_of(model).train_step
    rng = random.Random(cfg.seed * 7919 + dist.rank)  # per-rank sub-network sampling
    total, warmup = cfg.epochs * len(loader), cfg.warmup_epochs * len(loader)
    limit = total if cfg.max_steps is None else min(total, cfg.max_steps)
    bar = tqdm(total=limit, unit="step", disable=not dist.main, file=sys.stderr, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 15.0)  # logs get a line every 15 s, not a flood
    step, last = 0, {}
    model.train()
    for epoch in range(cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
            last = step_fn(net, xb.to(dist.device), yb.to(dist.device), rng, cfg.label_smoothing)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", refresh=False,
                            **{k: f"{v:.3f}" for k, v in last.items()})
            if step >= limit:
                break
        if step >= limit:
            break
    bar.close()
    return step, last


def _rank_digests(model, dist: Dist) -> list[str]:
    digests = [weight_digest(model)]
    if dist.world > 1:
        import torch.distributed as tdist

        gathered = [None] * dist.world
        tdist.all_gather_object(gathered, digests[0])
        digests = gathered
    return digests


def _finish(cfg: TrainConfig, model, dataset: Dataset, result: dict, digests: list[str], dist: Dist) -> None:
    """Rank 0: evaluate every preset and write the checkpoint; ``result`` gets top-1 and the path."""
    vx, vy = dataset.val.arrays(dataset.preprocess)
    presets = model.presets() if hasattr(model, "presets") else []
    top1 = evaluate_presets(model, vx, vy, presets)
    _log(f"\ntrained {result['steps']} steps in {result['seconds']:.1f} s\n" + preset_table(presets, top1), dist)
    path = save_checkpoint(
        cfg.out, model,
        preprocess=dataset.preprocess.to_dict(), classes=list(dataset.classes),
        data={"name": dataset.name, "split_hash": dataset.split_hash(),
              "sizes": {"train": len(dataset.train), "calib": len(dataset.calib), "val": len(dataset.val)}},
        metrics={"val_top1": top1},
        train={**asdict(cfg), **result, "weight_digests": digests, "torch": str(torch.__version__)},
    )
    _log(f"checkpoint written to {path}", dist)
    result.update(top1=top1, checkpoint=str(path))


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> dict:
    """Train ``cfg.model`` and write a checkpoint (rank 0). Returns a summary dict."""
    from edgevit.files import output_file

    # Checked before the long work: an existing folder takes the default file name inside it.
    cfg.out = str(output_file(cfg.out, "--out", default_name=Path(default_checkpoint_path(cfg.model, cfg.data)).name))
    dist = setup_distributed()
    if cfg.threads and dist.world == 1:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank; DDP also broadcasts them
    model, dataset = _model_and_data(cfg, dataset, dist)
    _log(f"edgevit train: {cfg.model} ({sum(p.numel() for p in model.parameters()):,} params) on "
         f"{dataset.summary()}; {dist.world} process(es), {torch.get_num_threads()} thread(s) each", dist)
    loader, sampler = _loader(cfg, dataset, dist)
    net = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Each pass leaves the other resolutions' position tables unused.
        net = DDP(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                  find_unused_parameters=True)
    start = time.perf_counter()
    step, _ = _loop(cfg, model, net, loader, sampler, _optimizer(cfg, model), dist)
    seconds = time.perf_counter() - start
    digests = _rank_digests(model, dist)
    in_sync = len(set(digests)) == 1
    result = {"seconds": seconds, "steps": step, "world_size": dist.world, "ranks_in_sync": in_sync}
    if dist.main:
        if not in_sync:
            _log(f"warning: the ranks' weights differ after training: {digests}", dist)
        _finish(cfg, model, dataset, result, digests, dist)
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        tdist.destroy_process_group()
    return result


def data_overrides(model: str, data: str | None) -> dict:
    """Model options the data decides (the model family's ``data_overrides``: a raster's band count)."""
    from edgevit.models import family_of

    return {} if data is None else family_of(model).data_overrides(data)


def default_checkpoint_path(model: str, data: str | None) -> str:
    from edgevit.data.datasets import EMBEDDED

    if data is None:
        tag = EMBEDDED[family_of(model).input_kind]
    else:
        tag = data if data in EMBEDDED.values() else Path(data).stem
    return str(Path("runs") / f"{model}-{tag}.pt")
