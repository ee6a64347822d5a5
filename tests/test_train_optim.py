"""AdamW parameter groups and the warm-up + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from unitune.config import OptimSpec
from unitune.train.optim import WarmupCosine, build_optimizer, build_scheduler


class Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.text_embed = nn.Embedding(10, 4)
        self.text = nn.Linear(4, 4, bias=False)
        self.proj = nn.Linear(4, 2)
        self.text.requires_grad_(True)

    def param_groups(self):
        return {"visual": list(self.visual.parameters()),
                "text": [self.text_embed.weight, self.text.weight],
                "other": list(self.proj.parameters())}


def groups_by_name(opt):
    return {g["name"]: g for g in opt.param_groups}


def test_groups_split_decay_and_per_tower_lr():
    model = Towers()
    scale = nn.Module()
    scale.log_gamma = nn.Parameter(torch.tensor(3.0))
    opt = build_optimizer(model, OptimSpec(lr=1e-3, visual_lr=1e-4, weight_decay=0.05), scale)
    g = groups_by_name(opt)
    ids = {name: {id(p) for p in group["params"]} for name, group in g.items()}
    assert ids["visual"] == {id(model.visual[0].weight)}
    assert ids["visual_no_decay"] == {id(model.visual[0].bias), id(model.visual[1].weight), id(model.visual[1].bias)}
    assert ids["text"] == {id(model.text.weight)}
    assert ids["text_no_decay"] == {id(model.text_embed.weight)}
    assert ids["other"] == {id(model.proj.weight)}
    assert ids["other_no_decay"] == {id(model.proj.bias), id(scale.log_gamma)}
    assert g["visual"]["lr"] == g["visual_no_decay"]["lr"] == 1e-4
    assert g["text"]["lr"] == g["other"]["lr"] == 1e-3
    assert all(g[n]["weight_decay"] == 0.05 for n in ("visual", "text", "other"))
    assert all(g[n]["weight_decay"] == 0.0 for n in g if n.endswith("_no_decay"))


def test_frozen_parameters_are_left_out():
    model = Towers()
    model.visual.requires_grad_(False)
    g = groups_by_name(build_optimizer(model, OptimSpec()))
    assert "visual" not in g and "visual_no_decay" not in g


@pytest.mark.parametrize("step,want", [(0, 0.25), (1, 0.5), (3, 1.0), (4, 1.0), (8, 0.5), (12, 0.0)])
def test_warmup_cosine_known_points(step, want):
    # warm-up 4 steps: (s+1)/4; then 0.5 * (1 + cos(pi * (s-4)/8)).
    assert WarmupCosine(4, 12)(step) == pytest.approx(want, abs=1e-12)


def test_scheduler_steps_per_batch_and_survives_state_dict():
    opt = build_optimizer(Towers(), OptimSpec(lr=1.0, warmup_epochs=0.5))
    sched = build_scheduler(opt, warmup_epochs=0.5, epochs=2, steps_per_epoch=4)  # 2 warm-up of 8
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"warmup_steps": 2, "total_steps": 8}
    torch.save(state, "/dev/null")


def test_bad_schedule_arguments():
    with pytest.raises(ValueError):
        WarmupCosine(5, 4)
