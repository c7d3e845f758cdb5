import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgevit.build.checkpoints import load_checkpoint
from edgevit.models import create_model
from edgevit.models.supervit import supervit_configs, supervit_step
from edgevit.build.train import TrainConfig, lr_at, train

ROOT = Path(__file__).resolve().parents[1]


def test_configs_are_largest_plus_random_smaller():
    m = create_model("supervit-nano")
    rng = random.Random(0)
    seen_sizes, seen_rates = set(), set()
    for _ in range(200):
        c = supervit_configs(m, rng)
        assert c[0] == (32, 1.0) and c[1][0] == 32 and c[2][1] == 1.0 and c[3][0] == c[2][0]
        assert c[1][1] in (0.5, 0.7) and c[3][1] in (0.5, 0.7) and c[2][0] in (16, 20, 24)
        seen_sizes.add(c[2][0])
        seen_rates.update((c[1][1], c[3][1]))
    assert seen_sizes == {16, 20, 24} and seen_rates == {0.5, 0.7}


def test_step_gradients_equal_ce_kl_ce_kl_sum():
    """The step's accumulated gradient is that of CE0 + KL(p0||p1) + CE2 + KL(p2||p3), teachers detached."""
    torch.manual_seed(0)
    m = create_model("supervit-nano").train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    losses = supervit_step(m, x, y, random.Random(5), label_smoothing=0.1)
    got = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    assert set(losses) == {"ce0", "kl1", "ce2", "kl3"}

    m.zero_grad()
    (s0, r0), (s1, r1), (s2, r2), (s3, r3) = supervit_configs(m, random.Random(5))
    z0, z1, z2, z3 = m(x, s0, r0), m(x, s1, r1), m(x, s2, r2), m(x, s3, r3)
    total = (F.cross_entropy(z0, y, label_smoothing=0.1)
             + F.kl_div(z1.log_softmax(-1), z0.detach().softmax(-1), reduction="batchmean")
             + F.cross_entropy(z2, y, label_smoothing=0.1)
             + F.kl_div(z3.log_softmax(-1), z2.detach().softmax(-1), reduction="batchmean"))
    total.backward()
    for n, p in m.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)
    # Exactly the position tables of the two sizes used received gradient.
    used = {m.resolutions.index(s0), m.resolutions.index(s2)}
    for i, t in enumerate(m.pos_embed_list):
        assert (t.grad is not None and t.grad.abs().sum() > 0) == (i in used)


def test_lr_schedule_warms_up_then_decays_to_floor():
    lrs = [lr_at(s, 100, 10, 1e-3, 1e-5) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, 100, 10, 1e-3, 1e-5) == pytest.approx(1e-5)


@pytest.mark.slow
def test_short_training_writes_complete_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    r = train(TrainConfig(epochs=1, max_steps=3, batch_size=16, out=str(out)))
    assert r["steps"] == 3 and out.exists()
    ck = load_checkpoint(out)
    meta = ck.meta
    assert meta["classes"] == [str(i) for i in range(10)]
    assert meta["preprocess"]["crop"] == 32 and meta["data"]["name"] == "digits"
    assert len(meta["data"]["split_hash"]) == 16
    assert len(meta["metrics"]["val_top1"]) == 12
    assert meta["train"]["steps"] == 3 and meta["train"]["world_size"] == 1
    torch.manual_seed(0)  # the seed train() starts from: the weights must have moved away from it
    init = create_model("supervit-nano")
    assert not torch.equal(init.head.weight, ck.model.head.weight)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_stay_identical(tmp_path):
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "edgevit", "train", "--epochs", "1", "--max-steps", "4", "--batch-size", "16", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load_checkpoint(out)
    t = ck.meta["train"]
    assert t["world_size"] == 2 and t["steps"] == 4
    assert len(t["weight_digests"]) == 2 and t["weight_digests"][0] == t["weight_digests"][1]
    assert t["ranks_in_sync"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt"]  # only rank 0 wrote
    assert r.stderr.count("checkpoint written") == 1


@pytest.mark.full
def test_default_training_meets_accuracy_targets(default_training):
    """The issue's bar: >= 95% at (32, 1.0) and >= 85% at (16, 0.5) with the CLI defaults."""
    _, r = default_training
    top1 = r["top1"]
    assert top1["r32-k1"] >= 0.95, top1
    assert top1["r16-k0.5"] >= 0.85, top1
