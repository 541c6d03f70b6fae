"""Float32 Muon: same update rule and state as `torch.optim.Muon` (which orthogonalizes in bfloat16), and the
STFT loss stays bounded when a batch holds a silent crop."""

from __future__ import annotations

import torch

from encore.training.losses import multi_resolution_stft_loss
from encore.training.muon import Muon, orthogonalize


def _pair(seed: int, **kwargs) -> tuple[torch.nn.Parameter, torch.nn.Parameter, Muon, torch.optim.Muon]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(24, 40, generator=g)
    ours, ref = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    return ours, ref, Muon([ours], **kwargs), torch.optim.Muon([ref], **kwargs)


def test_orthogonalize_flattens_the_spectrum_of_wide_and_tall_matrices() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(16, 48), (48, 16)]:
        x = torch.randn(*shape, generator=g) @ torch.diag(torch.logspace(-2, 1, shape[1]))
        s = torch.linalg.svdvals(orthogonalize(x, (3.4445, -4.7750, 2.0315), 5, 1e-7))
        assert s.max() < 1.5 and s.min() > 0.3, s  # raw singular values span 3 decades
        assert orthogonalize(x, (3.4445, -4.7750, 2.0315), 5, 1e-7).dtype == x.dtype


def test_matches_torch_muon_up_to_bfloat16_rounding_and_keeps_its_state() -> None:
    for kwargs in [{"lr": 0.02}, {"lr": 0.01, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}]:
        ours, ref, opt, ref_opt = _pair(1, **kwargs)
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            grad = torch.randn(ours.shape, generator=g)
            ours.grad, ref.grad = grad.clone(), grad.clone()
            opt.step()
            ref_opt.step()
        step = (ref.detach() - _pair(1, **kwargs)[1].detach()).abs().max()
        assert (ours - ref).abs().max() < 0.05 * step, ((ours - ref).abs().max(), step)
        assert torch.equal(opt.state[ours]["momentum_buffer"], ref_opt.state[ref]["momentum_buffer"])
        assert opt.state_dict()["param_groups"] == ref_opt.state_dict()["param_groups"]


def test_bfloat16_iteration_is_selectable() -> None:
    ours, ref, _, ref_opt = _pair(3, lr=0.02)
    opt = Muon([ours], lr=0.02, ns_dtype=torch.bfloat16)
    ours.grad = ref.grad = torch.ones_like(ours)
    opt.step()
    ref_opt.step()
    assert torch.equal(ours, ref)  # same arithmetic as torch's own bfloat16 path


def test_stft_loss_is_bounded_when_one_crop_is_silent() -> None:
    g = torch.Generator().manual_seed(4)
    target = 0.3 * torch.randn(4, 2, 4096, generator=g)
    target[1] = 0.0  # a stem resting through the whole crop
    pred = target + 0.01 * torch.randn(4, 2, 4096, generator=g)
    assert float(multi_resolution_stft_loss(pred, target, (512, 1024))) < 20.0
    assert float(multi_resolution_stft_loss(target, target, (512, 1024))) == 0.0
