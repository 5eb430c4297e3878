"""Optimizer of the official schedule: SGD with gradient clipping over the whole model.

``SOLVER.OPTIMIZER "ADAMW"`` swaps SGD for AdamW (same parameter groups) for short from-scratch
CPU runs: on the synthetic set its loss falls faster early on (``configs/kgdet_synth.yaml``; the
measured runs are in docs/synthetic_training.md). The configs of the paper's schedule keep SGD.

docs/DESIGN.md §9: the L2 norm of **all** gradients is clipped jointly to 35. Detectron2's
``SOLVER.CLIP_GRADIENTS`` (CLIP_TYPE "norm") clips each parameter separately, so this module wraps
the optimizer with a global clipper, as Detectron2 projects do for "full_model" clipping
(``SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM``; 0 disables it).

Mixed precision (``SOLVER.AMP.ENABLED``): ``GradScaler.step`` unscales the gradients before
``step()`` for ordinary optimizers, but hands a fused one (``SOLVER.ADAMW_FUSED``) the *scaled*
gradients with the scale in ``optimizer.grad_scale``, to be divided out inside the fused kernel.
The clipping step then clips the scaled norm against ``max_norm * grad_scale``, which is the
same clipping of the true gradients.
"""

import logging
from typing import Iterable, Optional, Type
import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.solver import build_optimizer as build_d2_optimizer
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["build_optimizer", "clip_full_model_gradients", "with_full_model_clipping"]

logger = logging.getLogger(__name__)


def clip_full_model_gradients(max_norm: float, norm_type: float = 2.0):
    """A clipper: clip the joint norm of all parameters' gradients to ``max_norm``.

    The returned ``clip(params, grad_scale=None)`` clips to ``max_norm * grad_scale`` when the
    gradients are still multiplied by AMP's loss scale ``grad_scale`` (a tensor, no host sync).
    """

    def clip(params: Iterable[torch.Tensor], grad_scale: Optional[torch.Tensor] = None) -> None:
        limit = max_norm if grad_scale is None else grad_scale * max_norm
        torch.nn.utils.clip_grad_norm_(list(params), limit, norm_type)

    return clip


def with_full_model_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step()`` first clips the joint gradient norm of
    all its parameters to ``max_norm`` (Detectron2's "global clipper" wrapper, aware of the
    scaled gradients ``GradScaler`` gives fused optimizers; module docstring)."""
    clip = clip_full_model_gradients(max_norm)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        # Set by GradScaler.step for optimizers with _step_supports_amp_scaling (fused AdamW)
        # when the gradients were not unscaled yet; None otherwise.
        clip(params, getattr(self, "grad_scale", None))
        return super(cls, self).step(closure)

    cls = type(optimizer_type.__name__ + "WithFullModelClip", (optimizer_type,), {"step": step})
    return cls


def _build_adamw(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW over Detectron2's default parameter groups (norm / bias decay and lr factors);
    fused into one kernel per group when ``SOLVER.ADAMW_FUSED`` and the device allow it."""
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    kwargs = dict(lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    optimizer = None
    if cfg.SOLVER.ADAMW_FUSED:
        try:
            optimizer = torch.optim.AdamW(params, fused=True, **kwargs)
        except RuntimeError as e:  # a device or dtype without a fused kernel
            logger.info("SOLVER.ADAMW_FUSED: fused AdamW unavailable (%s); using the loop", e)
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer)  # SOLVER.CLIP_GRADIENTS, as for SGD


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (Detectron2's, param groups from SOLVER.*) or AdamW, plus joint gradient clipping."""
    max_norm = float(cfg.SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM)
    if max_norm > 0 and cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        raise ValueError(
            "Two gradient clippings configured: SOLVER.CLIP_GRADIENTS.ENABLED = True and "
            f"SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM = {max_norm}; disable one of them"
        )
    if max_norm < 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS_FULL_MODEL_NORM must be >= 0, got {max_norm}")
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        optimizer = build_d2_optimizer(cfg, model)
    elif name == "ADAMW":
        optimizer = _build_adamw(cfg, model)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'ADAMW', got {cfg.SOLVER.OPTIMIZER!r}")
    if max_norm == 0:
        return optimizer
    # Make the optimizer an instance of a subclass whose step() clips all parameters jointly
    # (Detectron2's mechanism for a global clipper).
    optimizer.__class__ = with_full_model_clipping(type(optimizer), max_norm)
    logger.info("Clipping the gradient norm of all parameters jointly to %.1f", max_norm)
    return optimizer
