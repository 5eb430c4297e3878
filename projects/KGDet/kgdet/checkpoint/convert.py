"""Convert an official KGDet checkpoint (mmdetection v1) to this project's parameter names.

Name mapping (official → ours; ``{i}`` etc. carried over):

=============================================  ==================================================
``backbone.conv1.weight``                      ``backbone.bottom_up.stem.conv1.weight``
``backbone.bn1.*``                             ``backbone.bottom_up.stem.conv1.norm.*``
``backbone.layer{L}.{b}.conv{j}.weight``       ``backbone.bottom_up.res{L+1}.{b}.conv{j}.weight``
``backbone.layer{L}.{b}.bn{j}.*``              ``backbone.bottom_up.res{L+1}.{b}.conv{j}.norm.*``
``backbone.layer{L}.{b}.downsample.0.weight``  ``backbone.bottom_up.res{L+1}.{b}.shortcut.weight``
``backbone.layer{L}.{b}.downsample.1.*``       ``backbone.bottom_up.res{L+1}.{b}.shortcut.norm.*``
``neck.lateral_convs.{i}.conv/gn``             ``backbone.fpn_lateral{i+3}`` / ``….norm``
``neck.fpn_convs.{i}.conv/gn`` (i < 3)         ``backbone.fpn_output{i+3}`` / ``….norm``
``neck.fpn_convs.3`` / ``.4``                  ``backbone.top_block.p6`` / ``.p7``
``bbox_head.{cls,reg}_convs.{i}.conv/gn``      ``head.{cls,reg}_tower.{3i}`` / ``.{3i+1}``
``bbox_head.moment_transfer``                  ``head.moment_lambda``
``bbox_head.kp_rep_block_1.cls_conv/cls_out``  ``head.stages.0.cls_conv/cls_out``
``bbox_head.kp_rep_block_1.keypts_conv/_out``  ``head.stages.0.kp_conv/kp_out``
``bbox_head.kp_rep_block_{s}.reppts_out``      ``head.stages.{s-1}.encoder``
``bbox_head.kp_rep_block_{s}.cls_dfmconv_{k}`` ``head.stages.{s-1}.cls_dcns.{column index of k}``
``bbox_head.kp_rep_block_{s}.keypts_dfmconv_{k}`` ``head.stages.{s-1}.kp_dcns.{column index}``
``bbox_head.kp_rep_block_{s}.keypts_out``      ``head.stages.{s-1}.kp_out``
=============================================  ==================================================

Tensor layouts need no change: class channels are the 13 classes in dataset order (official
labels 1..13 minus the background), keypoint and point channels are yx-interleaved in global
slot order in both, DCN weights are (out, in, k, k) in both. ``num_batches_tracked`` buffers
are dropped when the target model has none (Detectron2's FrozenBN).
Known model differences that conversion cannot remove (docs/DESIGN.md §1, §13.5): the official
model trains BN affine parameters (ours: FrozenBN keeps the converted values), and uses the
legacy "+1" box convention (ours: continuous coordinates) — boxes may differ by about a pixel.
"""

import logging
import os
import pickle
import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple
import torch

from ..file_io import write_atomic

__all__ = [
    "OfficialCheckpointError",
    "official_to_project_name",
    "convert_official_state_dict",
    "load_official_state_dict",
    "save_converted_checkpoint",
]

logger = logging.getLogger(__name__)


class OfficialCheckpointError(ValueError):
    """A checkpoint that does not match the official names or the target model."""


def _rules(columns: Sequence[int]) -> List[Tuple["re.Pattern", Callable[["re.Match"], str]]]:
    col_index = {int(k): i for i, k in enumerate(columns)}

    def col(m):
        k = int(m["k"])
        if k not in col_index:
            raise OfficialCheckpointError(
                f"official deformable conv of kernel {k} has no column in "
                f"MODEL.KGDET.COLUMNS = {list(columns)}"
            )
        return col_index[k]

    bn = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
    bu = "backbone.bottom_up"
    rules = [
        (r"backbone\.conv1\.weight", lambda m: f"{bu}.stem.conv1.weight"),
        (r"backbone\.bn1\." + bn, lambda m: f"{bu}.stem.conv1.norm.{m['p']}"),
        (
            r"backbone\.layer(?P<L>\d)\.(?P<b>\d+)\.conv(?P<j>\d)\.weight",
            lambda m: f"{bu}.res{int(m['L']) + 1}.{m['b']}.conv{m['j']}.weight",
        ),
        (
            r"backbone\.layer(?P<L>\d)\.(?P<b>\d+)\.bn(?P<j>\d)\." + bn,
            lambda m: f"{bu}.res{int(m['L']) + 1}.{m['b']}.conv{m['j']}.norm.{m['p']}",
        ),
        (
            r"backbone\.layer(?P<L>\d)\.(?P<b>\d+)\.downsample\.0\.weight",
            lambda m: f"{bu}.res{int(m['L']) + 1}.{m['b']}.shortcut.weight",
        ),
        (
            r"backbone\.layer(?P<L>\d)\.(?P<b>\d+)\.downsample\.1\." + bn,
            lambda m: f"{bu}.res{int(m['L']) + 1}.{m['b']}.shortcut.norm.{m['p']}",
        ),
        (
            r"neck\.lateral_convs\.(?P<i>\d)\.conv\.(?P<p>weight|bias)",
            lambda m: f"backbone.fpn_lateral{int(m['i']) + 3}.{m['p']}",
        ),
        (
            r"neck\.lateral_convs\.(?P<i>\d)\.gn\.(?P<p>weight|bias)",
            lambda m: f"backbone.fpn_lateral{int(m['i']) + 3}.norm.{m['p']}",
        ),
        (
            r"neck\.fpn_convs\.(?P<i>[012])\.conv\.(?P<p>weight|bias)",
            lambda m: f"backbone.fpn_output{int(m['i']) + 3}.{m['p']}",
        ),
        (
            r"neck\.fpn_convs\.(?P<i>[012])\.gn\.(?P<p>weight|bias)",
            lambda m: f"backbone.fpn_output{int(m['i']) + 3}.norm.{m['p']}",
        ),
        (
            r"neck\.fpn_convs\.(?P<i>[34])\.conv\.(?P<p>weight|bias)",
            lambda m: f"backbone.top_block.p{int(m['i']) + 3}.{m['p']}",
        ),
        (
            r"neck\.fpn_convs\.(?P<i>[34])\.gn\.(?P<p>weight|bias)",
            lambda m: f"backbone.top_block.p{int(m['i']) + 3}.norm.{m['p']}",
        ),
        (
            r"bbox_head\.(?P<t>cls|reg)_convs\.(?P<i>\d+)\.conv\.(?P<p>weight|bias)",
            lambda m: f"head.{m['t']}_tower.{3 * int(m['i'])}.{m['p']}",
        ),
        (
            r"bbox_head\.(?P<t>cls|reg)_convs\.(?P<i>\d+)\.gn\.(?P<p>weight|bias)",
            lambda m: f"head.{m['t']}_tower.{3 * int(m['i']) + 1}.{m['p']}",
        ),
        (r"bbox_head\.moment_transfer", lambda m: "head.moment_lambda"),
        (
            r"bbox_head\.kp_rep_block_(?P<s>\d)\.(?P<n>cls_conv|cls_out)\.(?P<p>weight|bias)",
            lambda m: f"head.stages.{int(m['s']) - 1}.{m['n']}.{m['p']}",
        ),
        (
            r"bbox_head\.kp_rep_block_(?P<s>\d)\.keypts_(?P<n>conv|out)\.(?P<p>weight|bias)",
            lambda m: f"head.stages.{int(m['s']) - 1}.kp_{m['n']}.{m['p']}",
        ),
        (
            r"bbox_head\.kp_rep_block_(?P<s>\d)\.reppts_out\.(?P<p>weight|bias)",
            lambda m: f"head.stages.{int(m['s']) - 1}.encoder.{m['p']}",
        ),
        (
            r"bbox_head\.kp_rep_block_(?P<s>\d)\.cls_dfmconv_(?P<k>\d)\.weight",
            lambda m: f"head.stages.{int(m['s']) - 1}.cls_dcns.{col(m)}.weight",
        ),
        (
            r"bbox_head\.kp_rep_block_(?P<s>\d)\.keypts_dfmconv_(?P<k>\d)\.weight",
            lambda m: f"head.stages.{int(m['s']) - 1}.kp_dcns.{col(m)}.weight",
        ),
    ]
    return [(re.compile(pattern + r"\Z"), fn) for pattern, fn in rules]


def official_to_project_name(name: str, columns: Sequence[int] = (3, 5, 7)) -> Optional[str]:
    """Our name for one official parameter/buffer name, or None if no rule matches."""
    for pattern, fn in _rules(columns):
        m = pattern.match(name)
        if m:
            return fn(m)
    return None


def _fmt(names: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(sorted(names)[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return shown + more


def convert_official_state_dict(
    official: Mapping[str, torch.Tensor],
    target: Optional[Mapping[str, Tuple[int, ...]]] = None,
    columns: Sequence[int] = (3, 5, 7),
) -> "OrderedDict[str, torch.Tensor]":
    """Rename an official state dict; with ``target`` (our name -> shape) check it completely.

    Raises:
        OfficialCheckpointError: one error listing, by name, every official key without a
            rule or without a counterpart in the target ("unexpected"), every target key the
            checkpoint does not provide ("missing"), and every shape mismatch.
    """
    rules = _rules(columns)
    converted: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unexpected, mismatched, dropped = [], [], []
    for name, value in official.items():
        new = None
        for pattern, fn in rules:
            m = pattern.match(name)
            if m:
                new = fn(m)
                break
        if new is None:
            unexpected.append(name)
            continue
        if target is not None and new not in target:
            if name.endswith("num_batches_tracked"):
                dropped.append(name)  # FrozenBN keeps no step counter
            else:
                unexpected.append(f"{name} (-> {new})")
            continue
        value = torch.as_tensor(value)
        if target is not None and tuple(value.shape) != tuple(target[new]):
            mismatched.append(f"{name} {tuple(value.shape)} -> {new} {tuple(target[new])}")
            continue
        converted[new] = value.detach().cpu()
    missing = [] if target is None else [k for k in target if k not in converted]
    # A target name fed by a mismatched tensor is reported as mismatch only.
    mismatched_targets = {m.split(" -> ")[1].split(" ")[0] for m in mismatched}
    missing = [k for k in missing if k not in mismatched_targets]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected official keys: {_fmt(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing keys of this model: {_fmt(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_fmt(mismatched)}")
    if problems:
        raise OfficialCheckpointError(
            "The checkpoint does not match the official KGDet layout / this model config:\n  "
            + "\n  ".join(problems)
        )
    if dropped:
        logger.info(f"Dropped {len(dropped)} BatchNorm num_batches_tracked buffers.")
    return converted


def load_official_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict of an mmdetection checkpoint (``{"state_dict": ...}``) or a bare one.

    Loads with ``weights_only=True``; mmdetection checkpoints whose ``meta`` holds pickled
    objects need ``allow_pickle=True`` (only for files you trust).
    """
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"Checkpoint '{path}' does not exist.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        raise OfficialCheckpointError(
            f"Cannot load '{path}' with weights_only=True ({e}). If you trust the file, "
            "re-run with --allow-pickle."
        ) from e
    except Exception as e:  # noqa: B902 - torch raises many types for corrupt files
        raise OfficialCheckpointError(f"Cannot read checkpoint '{path}': {e}") from e
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, Mapping) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise OfficialCheckpointError(
            f"'{path}' holds no state dict (expected a mapping of tensors, or one under "
            "'state_dict' as mmdetection saves it)."
        )
    # Checkpoints saved from DataParallel carry a "module." prefix.
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in ckpt.items()}


def save_converted_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str) -> None:
    """Save for ``DetectionCheckpointer``: ``.pkl`` = Detectron2 format (numpy arrays, exact
    names), anything else = tensor-only ``{"model": state_dict}`` (loads with weights_only)."""
    if path.endswith(".pkl"):
        data = {
            "model": {k: v.numpy() for k, v in state_dict.items()},
            "__author__": "KGDet official checkpoint converter",
            "matching_heuristics": False,
        }

        def _write(tmp):
            with open(tmp, "wb") as f:
                pickle.dump(data, f)

    else:
        data = {"model": OrderedDict((k, v.contiguous()) for k, v in state_dict.items())}

        def _write(tmp):
            torch.save(data, tmp)

    write_atomic(path, _write)
    logger.info(f"Saved {len(state_dict)} converted tensors to {path}")
