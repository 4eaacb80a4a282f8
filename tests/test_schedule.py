import math

import pytest
import torch
from torch import nn

from seqfit.errors import SeqfitError
from seqfit.engine.schedule import make_schedule


def _opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _lr(opt) -> float:
    return opt.param_groups[0]["lr"]


def test_plateau_divides_by_4_only_when_validation_does_not_improve():
    opt = _opt(20.0)
    sched = make_schedule("plateau", opt, base_lr=20.0, total_steps=100)
    sched.on_validation(5.0)  # first validation always improves
    assert _lr(opt) == 20.0
    sched.on_validation(4.0)  # improved
    assert _lr(opt) == 20.0
    sched.on_validation(4.0)  # equal is not an improvement
    assert _lr(opt) == 5.0
    sched.step()
    assert _lr(opt) == 5.0  # steps do not undo the annealing
    sched.on_validation(4.5)  # worse than the best (4.0)
    assert _lr(opt) == 1.25 and sched.lr == 1.25


def test_plateau_matches_torch_reduce_lr_on_plateau():
    losses = [6.0, 5.5, 5.6, 5.4, 5.4, 5.45, 5.3, 5.31, 5.2]
    ours, ref = _opt(20.0), _opt(20.0)
    sched = make_schedule("plateau", ours, base_lr=20.0, total_steps=0)
    # the word_language_model recipe, in torch's terms: anneal on the first bad epoch, strict improvement
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(ref, mode="min", factor=0.25, patience=0,
                                                             threshold=0.0, eps=0.0)
    for loss in losses:
        sched.on_validation(loss)
        torch_sched.step(loss)
        assert math.isclose(_lr(ours), _lr(ref), rel_tol=1e-12)


def test_other_schedules_ignore_validation():
    opt = _opt(1.0)
    sched = make_schedule("constant", opt, base_lr=1.0, total_steps=10)
    for loss in (3.0, 4.0, 5.0):
        sched.on_validation(loss)
    assert _lr(opt) == 1.0


def test_cosine_warmup_shape():
    base, warmup, total = 0.1, 10, 110
    opt = _opt(base)
    sched = make_schedule("cosine", opt, base_lr=base, total_steps=total, warmup=warmup)
    lrs = [_lr(opt)]
    for _ in range(total + 5):
        sched.step()
        lrs.append(_lr(opt))
    assert lrs[0] == 0.0
    assert math.isclose(lrs[warmup // 2], base / 2)  # linear ramp
    assert math.isclose(lrs[warmup], base)
    assert math.isclose(lrs[warmup + (total - warmup) // 2], base / 2)  # half-way down the cosine
    assert lrs[total] == pytest.approx(0.0, abs=1e-15) and lrs[-1] == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # monotone after warm-up


def test_cosine_after_warmup_matches_torch_cosine_annealing():
    base, warmup, total = 0.3, 5, 45
    ours, ref = _opt(base), _opt(base)
    sched = make_schedule("cosine", ours, base_lr=base, total_steps=total, warmup=warmup)
    torch_sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=total - warmup, eta_min=0.0)
    for _ in range(warmup):
        sched.step()
    for _ in range(total - warmup):
        assert math.isclose(_lr(ours), _lr(ref), rel_tol=1e-9, abs_tol=1e-15)
        sched.step()
        ref.step()
        torch_sched.step()


def test_constant_with_warmup_and_group_ratios():
    p1, p2 = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1]}, {"params": [p2], "lr": 0.5}], lr=2.0)
    sched = make_schedule("constant", opt, base_lr=2.0, total_steps=0, warmup=4)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step()
    assert seen == [[0.0, 0.0], [0.5, 0.125], [1.0, 0.25], [1.5, 0.375], [2.0, 0.5], [2.0, 0.5]]


def test_schedules_a_list_of_optimizers():
    a, b = _opt(1.0), _opt(1.0)
    sched = make_schedule("plateau", [a, b], base_lr=1.0, total_steps=0)
    sched.on_validation(1.0)
    sched.on_validation(2.0)
    assert _lr(a) == _lr(b) == 0.25


@pytest.mark.parametrize("name", ["constant", "plateau", "cosine"])
def test_state_dict_round_trip_resumes_identically(name):
    vals = [3.0, 2.5, 2.6, 2.4, 2.45, 2.2, 2.3]

    def run(opt, sched, start, stop):
        lrs = []
        for i in range(start, stop):
            opt.step()
            sched.step()
            if i % 5 == 4:
                sched.on_validation(vals[i // 5])
            lrs.append(_lr(opt))
        return lrs

    kw = dict(base_lr=0.5, total_steps=30, warmup=4)
    opt = _opt(0.5)
    sched = make_schedule(name, opt, **kw)
    straight = run(opt, sched, 0, 30)

    opt = _opt(0.5)
    sched = make_schedule(name, opt, **kw)
    first = run(opt, sched, 0, 13)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    opt2 = _opt(0.5)  # fresh objects, as after a restart: optimizer state first, then the schedule
    sched2 = make_schedule(name, opt2, **kw)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    assert _lr(opt2) == _lr(opt)
    assert first + run(opt2, sched2, 13, 30) == straight


def test_bad_arguments_raise():
    with pytest.raises(SeqfitError, match="unknown schedule"):
        make_schedule("step", _opt(), base_lr=1.0, total_steps=10)
    with pytest.raises(SeqfitError, match="total steps"):
        make_schedule("cosine", _opt(), base_lr=1.0, total_steps=10, warmup=10)
    with pytest.raises(SeqfitError, match="anneal"):
        make_schedule("plateau", _opt(), base_lr=1.0, total_steps=10, anneal_factor=1.0)
    sched = make_schedule("cosine", _opt(), base_lr=1.0, total_steps=10)
    with pytest.raises(SeqfitError, match="--schedule cosine"):
        make_schedule("plateau", _opt(), base_lr=1.0, total_steps=10).load_state_dict(sched.state_dict())


def test_plateau_stops_annealing_at_its_floor():
    import torch

    from seqfit.engine.schedule import MIN_PLATEAU_SCALE, make_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_schedule("plateau", opt, base_lr=1.0, total_steps=10)
    sched.on_validation(1.0)
    for _ in range(300):  # a short series: hundreds of epochs without improvement
        sched.on_validation(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(MIN_PLATEAU_SCALE) and MIN_PLATEAU_SCALE > 1e-4
