"""Muon + AdamW: who gets which optimizer, what a step moves, orthogonal updates, exact resume, schedule."""

import io
import math

import pytest
import torch
from torch import nn

from encore.config import ModelConfig
from encore.model import DecoderOnly, EncoderDecoder
from encore.train import optim
from encore.train.optim import (
    CombinedOptimizer,
    Muon,
    build_optimizer,
    build_scheduler,
    lr_schedule,
    param_groups_for_muon,
)

HAS_TORCH_MUON = hasattr(torch.optim, "Muon")
HIDDEN = ("attn.qkv.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")
CROSS = ("cross.q.weight", "cross.kv.weight", "cross.out.weight")


@pytest.fixture(params=["torch", "fallback"])
def muon_impl(request, monkeypatch):
    """Run a test with torch.optim.Muon and again with encore's own Muon (forced even when torch has one)."""
    if request.param == "torch":
        if not HAS_TORCH_MUON:
            pytest.skip("this torch has no torch.optim.Muon")
        monkeypatch.setattr(optim, "USE_TORCH_MUON", True)
        return torch.optim.Muon
    monkeypatch.setattr(optim, "USE_TORCH_MUON", False)
    return Muon


def small_model(arch: str = "encdec", tied: bool = True, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig.preset(
        f"{arch}-tiny",
        vocab_size=64,
        d_model=64,
        n_heads=2,
        n_kv_heads=1,
        head_dim=32,
        mlp_dim=96,
        n_encoder_layers=2 if arch == "encdec" else 0,
        n_decoder_layers=2,
        tie_embeddings=tied,
    )
    return (EncoderDecoder if arch == "encdec" else DecoderOnly)(config)


def loss_of(model: nn.Module, seed: int) -> torch.Tensor:
    """Cross-entropy on a random batch that depends only on `seed`: the same data for every run."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (2, 7), generator=g)
    y = torch.randint(0, 64, (2, 5), generator=g)
    logits = model(x, y) if isinstance(model, EncoderDecoder) else model(torch.cat([x, y], 1))[:, -5:]
    return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def train_steps(model, optimizer, scheduler, seeds) -> None:
    for s in seeds:
        loss_of(model, s).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


# --- grouping --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
@pytest.mark.parametrize("tied", [True, False])
def test_grouping_by_name(arch, tied):
    config = ModelConfig.preset(f"{arch}-tiny", tie_embeddings=tied)
    model = (EncoderDecoder if arch == "encdec" else DecoderOnly)(config)
    muon, adamw = param_groups_for_muon(model)
    muon_names, adamw_names = [n for n, _ in muon], [n for n, _ in adamw]

    # every hidden matrix, and nothing else, goes to Muon: 4 per layer, + 3 for cross-attention
    n_layers = config.n_encoder_layers + config.n_decoder_layers
    n_cross = config.n_decoder_layers if arch == "encdec" else 0
    assert len(muon_names) == 4 * n_layers + 3 * n_cross
    assert all(n.endswith(HIDDEN + CROSS) for n in muon_names)
    assert sum(n.endswith(CROSS) for n in muon_names) == 3 * n_cross
    assert all(p.ndim == 2 for _, p in muon)

    # AdamW: the embedding (= the tied head), the untied head, every norm weight (1-D)
    assert "embed.weight" in adamw_names
    assert ("lm_head.weight" in adamw_names) == (not tied)
    assert all(p.ndim == 1 for n, p in adamw if n not in ("embed.weight", "lm_head.weight"))
    assert {n for n, p in adamw if p.ndim == 2} == ({"embed.weight"} if tied else {"embed.weight", "lm_head.weight"})

    # a partition of all parameters, each once
    assert sorted(muon_names + adamw_names) == sorted(n for n, _ in model.named_parameters())


def test_grouping_ignores_frozen_and_wrapper_prefixes():
    class Wrapper(nn.Module):  # like DDP / torch.compile: everything under a prefix
        def __init__(self, inner):
            super().__init__()
            self.module = inner
            self.token_table = nn.Embedding(10, 8)  # an embedding by type, whatever its name

    model = Wrapper(small_model("encdec", tied=False))
    model.module.decoder[0].mlp.up.weight.requires_grad_(False)
    model.module.final_norm.weight.requires_grad_(False)
    muon, adamw = param_groups_for_muon(model)
    muon_names, adamw_names = {n for n, _ in muon}, {n for n, _ in adamw}
    assert "module.decoder.0.mlp.up.weight" not in muon_names | adamw_names
    assert "module.final_norm.weight" not in muon_names | adamw_names
    assert {"module.embed.weight", "module.lm_head.weight", "token_table.weight"} <= adamw_names
    assert "module.decoder.1.cross.kv.weight" in muon_names


# --- what a step moves -------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["encdec", "deconly"])
def test_step_moves_trainable_params_with_grads_only(arch, muon_impl):
    model = small_model(arch, tied=False)
    frozen = model.decoder[0].attn.qkv.weight.requires_grad_(False)
    frozen_norm = model.decoder[0].mlp_norm.weight.requires_grad_(False)
    opt = build_optimizer(model, "muon", lr=1e-2, muon_lr=0.02, weight_decay=0.1)
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt.optimizers["muon"], muon_impl)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    loss_of(model, 0).backward()
    no_grad = {"decoder.1.mlp.down.weight", "decoder.1.attn_norm.weight"}  # one Muon, one AdamW parameter
    for n, p in model.named_parameters():
        if n in no_grad:
            p.grad = None
    opt.step()

    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    expected = {n for n, p in model.named_parameters() if p.requires_grad} - no_grad
    assert moved == expected  # Muon params, embeddings, head, norms all move; nothing else does
    assert torch.equal(frozen, before["decoder.0.attn.qkv.weight"])
    assert torch.equal(frozen_norm, before["decoder.0.mlp_norm.weight"])

    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())


def test_adamw_only():
    model = small_model("deconly", tied=False)
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decay == {"adamw_decay": 0.1, "adamw_no_decay": 0.0}  # no decay on norm weights
    before = [p.detach().clone() for p in model.parameters()]
    loss_of(model, 0).backward()
    opt.step()
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_bad_names_and_mismatched_state():
    model = small_model()
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        build_optimizer(model, "sgd", lr=1e-3)
    adamw_state = build_optimizer(model, "adamw", lr=1e-3).state_dict()
    with pytest.raises(ValueError, match="another --optimizer"):
        build_optimizer(model, "muon", lr=1e-3).load_state_dict(adamw_state)
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.ones(4))])


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="this torch has no torch.optim.Muon")
def test_torch_muon_takes_only_2d_params():
    # documents why AdamW is needed beside it: torch's Muon refuses norm weights and biases
    with pytest.raises(ValueError, match="2D"):
        torch.optim.Muon([nn.Parameter(torch.ones(4))])


# --- Muon's update is orthogonalised -------------------------------------------------------------


@pytest.mark.parametrize("shape", [(48, 48), (32, 96), (96, 32)])
def test_muon_update_is_orthogonalised(shape, muon_impl):
    torch.manual_seed(0)
    A, B = shape
    # a gradient with a spread spectrum (singular values 1 .. 0.05) and random singular vectors
    U, _ = torch.linalg.qr(torch.randn(A, A))
    V, _ = torch.linalg.qr(torch.randn(B, B))
    k = min(A, B)
    grad = U[:, :k] @ torch.diag(torch.logspace(0, math.log10(0.05), k)) @ V[:, :k].T
    w = nn.Parameter(torch.randn(A, B))
    before = w.detach().clone()
    lr = 0.01
    opt = muon_impl([w], lr=lr, weight_decay=0.0, momentum=0.95)
    w.grad = grad.clone()
    opt.step()
    # first step: momentum buffer and Nesterov update are both multiples of the gradient
    update = (before - w.detach()) / (lr * math.sqrt(max(1, A / B)))
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.5 and s.max() < 1.5, (s.min(), s.max())  # NS5's band around 1, not exactly 1
    # and it keeps the gradient's singular vectors: U^T update V is (nearly) diagonal, positive
    D = U[:, :k].T @ update @ V[:, :k]
    off_diagonal = D - torch.diag(torch.diagonal(D))
    assert off_diagonal.norm() < 0.05 * D.norm()
    assert (torch.diagonal(D) > 0.5).all()


@pytest.mark.skipif(not HAS_TORCH_MUON, reason="this torch has no torch.optim.Muon")
def test_fallback_muon_matches_torch_muon():
    """Our Muon mirrors torch's op for op (EMA momentum, Nesterov, bf16 NS5, sqrt(max(1, A/B)),
    decoupled weight decay): over several steps the parameters agree, and the state_dicts interchange."""
    torch.manual_seed(0)
    init = [torch.randn(24, 40), torch.randn(40, 24)]
    grads = [[torch.randn_like(t) for t in init] for _ in range(4)]
    params = {"torch": [nn.Parameter(t.clone()) for t in init], "ours": [nn.Parameter(t.clone()) for t in init]}
    opts = {
        "torch": torch.optim.Muon(params["torch"], lr=0.02, weight_decay=0.1, momentum=0.9),
        "ours": Muon(params["ours"], lr=0.02, weight_decay=0.1, momentum=0.9),
    }
    for step_grads in grads:
        for name, opt in opts.items():
            for p, g in zip(params[name], step_grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(params["torch"], params["ours"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # a checkpoint made with torch's Muon resumes in ours (same state keys)
    ours = Muon([nn.Parameter(t.clone()) for t in init], lr=0.02)
    ours.load_state_dict(opts["torch"].state_dict())
    assert torch.equal(ours.state[ours.param_groups[0]["params"][0]]["momentum_buffer"],
                       opts["torch"].state[params["torch"][0]]["momentum_buffer"])  # fmt: skip


# --- exact resume --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["muon", "adamw"])
def test_state_dict_round_trip_resumes_exactly(name, muon_impl):
    def fresh(model):
        opt = build_optimizer(model, name, lr=3e-3, muon_lr=0.02, weight_decay=0.01)
        return opt, build_scheduler(opt, warmup_steps=2, max_steps=10)

    model = small_model("encdec", tied=False)
    opt, sched = fresh(model)
    train_steps(model, opt, sched, seeds=range(3))

    # save as the training loop does: torch.save, read back with weights_only=True
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    train_steps(model, opt, sched, seeds=range(3, 5))  # the uninterrupted run

    resumed = small_model("encdec", tied=False, seed=123)  # different init: everything must come from the save
    resumed.load_state_dict(saved["model"])
    opt2, sched2 = fresh(resumed)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    train_steps(resumed, opt2, sched2, seeds=range(3, 5))

    for (n, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt2.param_groups]


# --- the schedule --------------------------------------------------------------------------------


def test_lr_schedule_key_steps():
    f = lambda step: lr_schedule(step, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)  # (0 + 1) / 10: the first step already moves
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # warmup done
    assert f(10) == pytest.approx(1.0)  # cosine starts at the top
    assert f(60) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)  # stays at the floor past max_steps
    assert all(f(s) >= f(s + 1) for s in range(10, 120))  # monotone after warmup
    assert lr_schedule(0, warmup_steps=0, max_steps=100) == pytest.approx(1.0)  # no warmup
    with pytest.raises(ValueError, match="min_lr_ratio=1.5"):
        lr_schedule(0, warmup_steps=0, max_steps=10, min_lr_ratio=1.5)


def test_lambdalr_drives_both_optimizers(muon_impl):
    model = small_model()
    opt = build_optimizer(model, "muon", lr=1e-3, muon_lr=0.02)
    sched = build_scheduler(opt, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    assert opt.param_groups[0]["name"] == "muon"  # the training loop logs param_groups[0]["lr"]
    base = {"muon": 0.02, "adamw_decay": 1e-3, "adamw_no_decay": 1e-3}
    for step in range(8):
        expected = lr_schedule(step, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(base[group["name"]] * expected)
        # the sub-optimizers see the same values: the groups are shared, not copied
        assert opt.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.02 * expected)
        loss_of(model, step).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
