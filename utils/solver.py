"""One SOLVER section for the optimizer and the learning-rate schedule (iteration-based)."""
from __future__ import annotations

import math

import torch
from torch import nn

from utils.config import NON_NEGATIVE, POSITIVE, PROBABILITY, CfgNode, each, one_of, rules, section


def add_solver_config(cfg: CfgNode) -> None:
    _S = section(cfg, "SOLVER")
    _S.OPTIM_METHOD = "adam"  # adam (L2 weight decay, as the lineage), adamw (decoupled) or sgd
    _S.BASE_LR = 1e-4  # learning rate of the head parameters at the schedule's peak
    _S.BACKBONE_LR_MULT = 1.0  # backbone (CLIP) learning rate = BASE_LR * this
    _S.WEIGHT_DECAY = 1e-3  # L2 (adam/sgd) or decoupled (adamw) weight decay
    _S.MOMENTUM = 0.9  # sgd momentum; adam beta1
    _S.DAMPENING = 0.0  # sgd dampening
    _S.NESTEROV = True  # sgd Nesterov momentum
    _S.LR_POLICY = "cosine"  # cosine (to 0 at MAX_EPOCH) or steps_with_relative_lrs
    _S.STEPS_ITER = 1000  # training iterations (episodes) per schedule unit ("epoch" in the lineage's YAML)
    _S.MAX_EPOCH = 10  # schedule length in units of STEPS_ITER (cosine reaches 0 here)
    _S.STEPS = [0]  # steps_with_relative_lrs: unit at which each LRS entry starts
    _S.LRS = [1.0]  # steps_with_relative_lrs: lr multipliers, one per STEPS entry
    _S.WARMUP_EPOCHS = 0.0  # linear warm-up length in units of STEPS_ITER
    _S.WARMUP_START_LR = 1e-6  # learning rate at iteration 0 when warming up
    rules("SOLVER", OPTIM_METHOD=one_of("adam", "adamw", "sgd"), BASE_LR=POSITIVE, BACKBONE_LR_MULT=NON_NEGATIVE,
          WEIGHT_DECAY=NON_NEGATIVE, MOMENTUM=PROBABILITY, DAMPENING=PROBABILITY,
          LR_POLICY=one_of("cosine", "steps_with_relative_lrs"), STEPS_ITER=POSITIVE, MAX_EPOCH=POSITIVE,
          STEPS=each(NON_NEGATIVE), LRS=each(NON_NEGATIVE), WARMUP_EPOCHS=NON_NEGATIVE, WARMUP_START_LR=NON_NEGATIVE)


def lr_factor(solver: CfgNode, iteration: int) -> float:
    """Multiplier on BASE_LR at `iteration` (a pure function: resuming needs no schedule state)."""
    epoch = iteration / solver.STEPS_ITER
    if solver.LR_POLICY == "cosine":
        factor = 0.5 * (math.cos(math.pi * min(epoch / solver.MAX_EPOCH, 1.0)) + 1.0)
    elif solver.LR_POLICY == "steps_with_relative_lrs":
        if len(solver.STEPS) != len(solver.LRS):
            raise ValueError(f"SOLVER.STEPS {list(solver.STEPS)} and SOLVER.LRS {list(solver.LRS)} differ in length")
        index = sum(1 for step in solver.STEPS if epoch >= step) - 1
        factor = solver.LRS[max(index, 0)]
    else:
        raise ValueError(f"SOLVER.LR_POLICY: unknown policy {solver.LR_POLICY!r} (cosine, steps_with_relative_lrs)")
    if epoch < solver.WARMUP_EPOCHS:
        # Linear from WARMUP_START_LR to the policy's value at the end of warm-up (the lineage's rule).
        end = lr_factor(_no_warmup(solver), int(solver.WARMUP_EPOCHS * solver.STEPS_ITER))
        start = solver.WARMUP_START_LR / solver.BASE_LR
        factor = start + (end - start) * epoch / solver.WARMUP_EPOCHS
    return factor


def _no_warmup(solver: CfgNode) -> CfgNode:
    plain = solver.clone()
    plain.defrost()
    plain.WARMUP_EPOCHS = 0.0
    return plain


def param_groups(model: nn.Module, solver: CfgNode) -> list[dict]:
    """Backbone and head groups with their own learning rates; frozen parameters are left out."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups()
    else:
        groups = [{"params": list(model.parameters()), "name": "head"}]
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            continue
        mult = solver.BACKBONE_LR_MULT if group["name"] == "backbone" else 1.0
        out.append({"params": params, "name": group["name"], "lr": solver.BASE_LR * mult})
    if not out:
        raise ValueError("the model has no trainable parameters (check VIDEO.HEAD.FINETUNE and module switches)")
    return out


def build_optimizer(model: nn.Module, solver: CfgNode) -> torch.optim.Optimizer:
    groups = param_groups(model, solver)
    method = solver.OPTIM_METHOD
    if method == "adam":
        return torch.optim.Adam(groups, lr=solver.BASE_LR, betas=(solver.MOMENTUM, 0.999),
                                weight_decay=solver.WEIGHT_DECAY)
    if method == "adamw":
        return torch.optim.AdamW(groups, lr=solver.BASE_LR, betas=(solver.MOMENTUM, 0.999),
                                 weight_decay=solver.WEIGHT_DECAY)
    if method == "sgd":
        return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, dampening=solver.DAMPENING,
                               nesterov=solver.NESTEROV, weight_decay=solver.WEIGHT_DECAY)
    raise ValueError(f"SOLVER.OPTIM_METHOD: unknown optimizer {method!r} (adam, adamw, sgd)")


def build_scheduler(optimizer: torch.optim.Optimizer, solver: CfgNode,
                    iterations_per_step: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR stepped once per optimizer step (every `iterations_per_step` training iterations, the gradient
    accumulation); the schedule itself is a function of the iteration."""
    solver = solver.clone()  # keep the lambda's config independent of later edits
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(solver, step * iterations_per_step))
