"""S4D numerics (kernel vs the SSM recurrence, chunked vs direct, FFT vs direct convolution) and
the two trainer hooks S4 relies on: per-parameter optimiser settings and the auxiliary loss."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

import heads.models
import heads.models.s4
from catalogs.base import Catalog, Task
from heads.models.mean import masked_mean
from heads.models.s4 import (
    S4D,
    circular_kernel,
    fft_conv,
    legs_diagonal,
    lin_diagonal,
    mark_optim,
    vandermonde_kernel,
    vandermonde_kernel_direct,
)
from heads.optim import param_groups
from heads.train import TrainConfig, train
from pipeline.store import FeatureStore, fingerprint


# Tiny models run on one intra-op thread (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def make_s4d(dim: int = 3, state_dim: int = 8, **kwargs) -> S4D:
    torch.manual_seed(0)
    layer = S4D(dim=dim, state_dim=state_dim, **kwargs).double()
    with torch.no_grad():  # spread dt so that slow and fast modes are both exercised
        layer.log_dt.copy_(torch.linspace(math.log(1e-2), math.log(0.5), dim))
    return layer


def ssm_recurrence(layer: S4D, u: torch.Tensor, direction: int = 0) -> torch.Tensor:
    """The discretised SSM run step by step, with both members of every conjugate pair.

    ``x_k = Ā x_{k-1} + B̄ u_k``, ``y_k = Re(C x_k) + D u_k`` over the full N-dim complex state
    (N/2 modes and their conjugates), so the output is real without any factor 2. With
    ``direction=1``: the anti-causal recurrence ``z_k = Ā z_{k+1} + B̄ u_{k+1}``,
    ``y_k = Re(C z_k)``.
    """
    a = torch.complex(-torch.exp(layer.log_neg_a_real), layer.a_imag)  # (H, M)
    dt = torch.exp(layer.log_dt).unsqueeze(-1)  # (H, 1)
    a_bar = torch.exp(dt * a)
    b_bar = (a_bar - 1) / a * torch.view_as_complex(layer.b)
    c = torch.view_as_complex(layer.c)[direction]
    a_bar, b_bar, c = (torch.cat([t, t.conj()], dim=-1) for t in (a_bar, b_bar, c))  # (H, N)
    batch, length, dim = u.shape
    state = torch.zeros(batch, dim, a_bar.shape[-1], dtype=a_bar.dtype)  # (B, H, N)
    out = torch.zeros_like(u)
    steps = range(length) if direction == 0 else range(length - 1, -1, -1)
    for k in steps:
        if direction == 0:
            state = a_bar * state + b_bar * u[:, k, :, None]
            out[:, k] = (c * state).sum(-1).real + layer.d * u[:, k]
        else:
            out[:, k] = (c * state).sum(-1).real
            state = a_bar * state + b_bar * u[:, k, :, None]
    return out


# --------------------------------------------------------------------------- initialisation


def test_legs_diagonal_is_the_spectrum_of_the_normal_part_of_hippo_legs():
    n = 12
    q = torch.arange(n, dtype=torch.float64)
    r = torch.sqrt(2 * q + 1)
    # HiPPO-LegS (S4 §3.1): -sqrt((2n+1)(2k+1)) below the diagonal, -(n+1) on it, 0 above.
    hippo = -torch.where(q[:, None] > q[None, :], torch.outer(r, r), torch.diag(q + 1))
    p = torch.sqrt(q + 0.5)
    eig = torch.linalg.eigvals(hippo + torch.outer(p, p))  # the normal part S = A + P Pᵀ
    upper = eig[eig.imag > 0]
    expected = upper[torch.argsort(upper.imag)]
    torch.testing.assert_close(legs_diagonal(n // 2), expected, atol=1e-8, rtol=1e-8)


def test_lin_diagonal():
    torch.testing.assert_close(
        lin_diagonal(3), torch.tensor([-0.5 + 0j, -0.5 + math.pi * 1j, -0.5 + 2 * math.pi * 1j],
                                      dtype=torch.complex128)
    )


@pytest.mark.parametrize("init", ["legs", "lin"])
def test_initial_parameters(init):
    layer = S4D(dim=5, state_dim=8, init=init, dt_min=1e-3, dt_max=1e-1)
    a = torch.complex(-torch.exp(layer.log_neg_a_real), layer.a_imag)  # (H, M)
    expected = (legs_diagonal if init == "legs" else lin_diagonal)(4).to(torch.complex64)
    torch.testing.assert_close(a, expected.expand(5, -1))
    dt = torch.exp(layer.log_dt)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 1e-1 * 1.001)).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"state_dim": 7}, "even"), ({"init": "hippo"}, "valid inits: legs, lin"),
     ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min")],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4D(dim=4, **kwargs)


# ----------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("init", ["legs", "lin"])
def test_layer_matches_the_ssm_recurrence(init):
    layer = make_s4d(init=init)
    u = torch.randn(2, 40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(layer(u), ssm_recurrence(layer, u), atol=1e-10, rtol=1e-8)


def test_bidirectional_layer_matches_two_recurrences():
    layer = make_s4d(bidirectional=True)
    u = torch.randn(2, 33, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = ssm_recurrence(layer, u) + ssm_recurrence(layer, u, direction=1)
    with torch.no_grad():
        torch.testing.assert_close(layer(u), expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("length, chunk", [(1, None), (50, None), (49, 7), (50, 7), (50, 1),
                                           (50, 64), (1000, None)])
def test_chunked_kernel_equals_direct_kernel(length, chunk):
    layer = make_s4d(dim=4, bidirectional=True)
    dt_a, coeff = layer.discretized()
    direct = vandermonde_kernel_direct(coeff, dt_a, length)  # (2, H, L)
    chunked = vandermonde_kernel(coeff, dt_a, length, chunk=chunk)
    assert chunked.shape == (2, 4, length)
    torch.testing.assert_close(chunked, direct, atol=1e-12, rtol=1e-10)


def test_chunked_kernel_gradients_equal_direct_ones():
    layer = make_s4d(dim=2)
    grads = []
    for direct in (False, True):
        layer.zero_grad()
        layer.kernel(37, direct=direct).square().sum().backward()
        grads.append([p.grad.clone() for p in layer.parameters() if p.grad is not None])
    assert len(grads[0]) == 5  # log_dt, A (2), B, C; D is not part of the kernel
    for chunked, direct in zip(*grads):
        torch.testing.assert_close(chunked, direct, atol=1e-10, rtol=1e-8)


def test_float32_kernel_is_close_to_float64_at_video_length():
    layer = make_s4d(dim=4, state_dim=64)
    reference = layer.kernel(2940)
    torch.testing.assert_close(layer.float().kernel(2940).double(), reference, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ convolution


def direct_conv(u: torch.Tensor, kernel: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``y[t] = Σ_{s<=t} k[t-s] u[s] + Σ_{s>t} k_b[s-t-1] u[s] + D u[t]`` by loops."""
    batch, length, dim = u.shape
    y = skip * u
    for t in range(length):
        for s in range(length):
            if s <= t:
                y[:, t] += kernel[0, :, t - s] * u[:, s]
            elif kernel.shape[0] == 2:
                y[:, t] += kernel[1, :, s - t - 1] * u[:, s]
    return y


@pytest.mark.parametrize("num_kernels", [1, 2])
@pytest.mark.parametrize("block_elements", [2**23, 2 * 18 * 2])  # one pass; 2 channels a pass
def test_fft_conv_equals_direct_conv(num_kernels, block_elements, monkeypatch):
    monkeypatch.setattr(heads.models.s4, "FFT_BLOCK_ELEMENTS", block_elements)
    generator = torch.Generator().manual_seed(3)
    u = torch.randn(2, 9, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    kernel = torch.randn(num_kernels, 3, 9, dtype=torch.float64, generator=generator,
                         requires_grad=True)
    skip = torch.randn(3, dtype=torch.float64, generator=generator, requires_grad=True)
    y = fft_conv(u, kernel if num_kernels == 2 else kernel[0], skip)
    expected = direct_conv(u, kernel, skip)
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-10)
    # The hand-written backward against autograd through the loops.
    weights = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    got = torch.autograd.grad((y * weights).sum(), (u, kernel, skip))
    want = torch.autograd.grad((expected * weights).sum(), (u, kernel, skip))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


def test_circular_kernel_layout():
    kernel = torch.arange(1.0, 7.0).reshape(2, 1, 3)  # causal [1, 2, 3], anti-causal [4, 5, 6]
    out = circular_kernel(kernel, 6, skip=torch.tensor([10.0]))
    torch.testing.assert_close(out, torch.tensor([[11.0, 2.0, 3.0, 6.0, 5.0, 4.0]]))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_padding_never_reaches_real_positions(bidirectional):
    layer = make_s4d(bidirectional=bidirectional)
    generator = torch.Generator().manual_seed(4)
    u = torch.randn(2, 11, 3, dtype=torch.float64, generator=generator)
    lengths = torch.tensor([11, 6])
    mask = torch.arange(11) < lengths[:, None]  # (B, L)
    padded = torch.cat([u, torch.full((2, 5, 3), math.nan, dtype=torch.float64)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    padded[1, 6:11] = 1e4  # padding inside the original length too
    with torch.no_grad():
        out = layer(padded, padded_mask)
        assert (out[~padded_mask] == 0).all()
        for b, length in enumerate(lengths.tolist()):
            alone = layer(u[b : b + 1, :length])  # (1, T_b, H)
            torch.testing.assert_close(out[b : b + 1, :length], alone, atol=1e-10, rtol=1e-8)


def test_gradients_reach_every_parameter():
    layer = make_s4d(bidirectional=True)
    layer(torch.randn(2, 10, 3, dtype=torch.float64)).square().sum().backward()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_half_precision_input_keeps_its_dtype():
    layer = S4D(dim=4, state_dim=8)
    out = layer(torch.randn(2, 16, 4).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------- trainer hooks


def test_ssm_parameters_carry_their_optimiser_settings():
    layer = S4D(dim=4, state_dim=8, lr=2e-3)
    marked = {name for name, p in layer.named_parameters() if hasattr(p, "_optim")}
    assert marked == {"log_dt", "log_neg_a_real", "a_imag", "b"}
    assert layer.log_dt._optim == {"lr": 2e-3, "weight_decay": 0.0}


def test_param_groups_honour_optim():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), S4D(dim=4, state_dim=8))
    groups = param_groups(model, lr=3e-4, weight_decay=0.05)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert len(by_id) == len(list(model.parameters()))
    assert by_id[id(model[0].weight)] == (3e-4, 0.05)
    assert by_id[id(model[0].bias)] == (3e-4, 0.0)
    assert by_id[id(model[1].weight)] == (3e-4, 0.0)
    for name in ("log_dt", "log_neg_a_real", "a_imag", "b"):
        assert by_id[id(getattr(model[2], name))] == (1e-3, 0.0), name
    assert by_id[id(model[2].c)] == (3e-4, 0.05)  # C is a readout weight, like a Linear's
    assert len(groups) == 3


AUX_LOSS = 50.0


class ProbeHead(nn.Module):
    """Mean pool + Linear, with an ``_optim`` parameter and a constant auxiliary loss."""

    streams = ("tokens",)

    def __init__(self, *, in_dim, num_outputs):
        super().__init__()
        dim = in_dim if isinstance(in_dim, int) else in_dim[0]
        self.linear = nn.Linear(dim, num_outputs)
        self.gain = mark_optim(nn.Parameter(torch.ones(1)), lr=0.125)
        self.aux_loss = None

    def forward(self, x, mask):
        self.aux_loss = AUX_LOSS + 0.0 * self.gain.sum()
        return self.linear(masked_mean(x, mask)) * self.gain


def write_probe_store(root, dataset: str) -> Catalog:
    """Six videos of 3 pooled 8-d tokens in one feature set; their catalog."""
    rng = np.random.default_rng(0)
    ids = [f"{dataset}/v{i}" for i in range(6)]
    spec = {"dataset": dataset, "backbone": "resnet18", "plan": "scene", "weights": "none"}
    fs = FeatureStore(root).create(f"{dataset}-resnet18-scene-{fingerprint(spec)[:12]}",
                                   spec=spec, token_kind="pooled", dim=8, dtype="float32")
    for vid in ids:
        fs.write_video(vid, rng.normal(size=(3, 8)), start_sec=np.arange(3.0),
                       end_sec=np.arange(1.0, 4.0))
    return Catalog(
        name=dataset, root=root,
        videos=pl.DataFrame({"video_id": ids, "path": [f"/nowhere/{v}" for v in ids],
                             "split": ["train"] * 4 + ["val", "test"]}),
        tasks={"kind": Task("kind", "classification", ("a", "b"))},
        labels=pl.DataFrame({"video_id": ids, "kind": ["a", "b"] * 3}),
    )


def test_train_uses_optim_groups_and_adds_the_aux_loss(tmp_path, monkeypatch):
    optimizers = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    monkeypatch.setitem(heads.models._REGISTRY, "probe", ProbeHead)
    catalog = write_probe_store(tmp_path / "store", "probe")
    config = TrainConfig(dataset="probe", task="kind", head="probe", features=("resnet18",),
                         store=str(tmp_path / "store"), runs_dir=str(tmp_path / "runs"),
                         epochs=3, batch_size=2, lr=1e-2, warmup_epochs=1)
    result = train(config, catalog=catalog, log=lambda _: None)

    (optimizer,) = optimizers
    lrs = {g["initial_lr"]: g["lr"] for g in optimizer.param_groups}
    assert set(lrs) == {1e-2, 0.125}  # the default group(s) and the probe's own
    # One schedule for all groups: every lr is at the same fraction of its initial value.
    factors = {round(lr / initial, 12) for initial, lr in lrs.items()}
    assert len(factors) == 1
    gain_group = next(g for g in optimizer.param_groups if g["initial_lr"] == 0.125)
    assert gain_group["weight_decay"] == 0.0
    # The auxiliary loss is part of what was minimised (cross-entropy alone is ~0.7).
    assert all(record["train_loss"] > AUX_LOSS for record in result["history"])
