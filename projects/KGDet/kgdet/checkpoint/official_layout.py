"""Parameter names and shapes of the official KGDet model (mmdetection v1), from its description.

The released detector (``RepPointsDetectorKp`` in ShenhanQian/KGDet, config
``kgdet_moment_r50_fpn_1x-deepfashion2.py``) consists of (docs/DESIGN.md §1–§2):

- ``backbone.*``: mmdetection's ResNet ("pytorch" style): ``conv1``/``bn1`` stem and
  ``layer1``..``layer4`` of Bottleneck blocks (``conv1..3``, ``bn1..3``, ``downsample.0/1`` in the
  first block of each layer); BatchNorm buffers include ``num_batches_tracked``;
- ``neck.*``: its ``FPN2`` on C3–C5 with GroupNorm: ``lateral_convs.{0,1,2}`` (1×1) and
  ``fpn_convs.{0,1,2}`` (3×3), then ``fpn_convs.3`` (3×3/s2 on C5 = P6) and ``fpn_convs.4``
  (3×3/s2 on P6 = P7); every one a ConvModule ``{conv, gn}`` without conv bias;
- ``bbox_head.*``: ``RepPointsHeadKp3RepCas1AssignOnce``: ``cls_convs.{0,1,2}`` and
  ``reg_convs.{0,1,2}`` ConvModules (3×3, GN), ``moment_transfer`` (2,), and three blocks
  ``kp_rep_block_{1,2,3}``. Block 1 (plain convs, with bias): ``cls_conv`` 3×3, ``cls_out`` 1×1 to
  C, ``keypts_conv`` 3×3, ``keypts_out`` 1×1 to 2K, ``reppts_out`` 1×1 2K→2P. Blocks 2–3:
  deformable ``cls_dfmconv_{3,5,7}`` and ``keypts_dfmconv_{3,5,7}`` (no bias), ``cls_out``
  1×1 from 3·256, ``keypts_out`` 1×1 from 3·256 to 2K, ``reppts_out`` 1×1 2K→2P.

C = 13 sigmoid outputs (the config's ``num_classes=14`` counts background), K = 294, P = 83.
Only names and shapes are described here (no code of the official implementation is used).
"""

from collections import OrderedDict
from typing import Dict, Sequence, Tuple

__all__ = ["RESNET_BLOCKS", "official_kgdet_shapes"]

RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

Shape = Tuple[int, ...]


def _bn(out: "OrderedDict[str, Shape]", prefix: str, channels: int, buffers: bool) -> None:
    out[f"{prefix}.weight"] = (channels,)
    out[f"{prefix}.bias"] = (channels,)
    if buffers:
        out[f"{prefix}.running_mean"] = (channels,)
        out[f"{prefix}.running_var"] = (channels,)
        out[f"{prefix}.num_batches_tracked"] = ()


def _conv_gn(out, prefix: str, cin: int, cout: int, k: int) -> None:
    out[f"{prefix}.conv.weight"] = (cout, cin, k, k)
    out[f"{prefix}.gn.weight"] = (cout,)
    out[f"{prefix}.gn.bias"] = (cout,)


def _conv(out, prefix: str, cin: int, cout: int, k: int, bias: bool = True) -> None:
    out[f"{prefix}.weight"] = (cout, cin, k, k)
    if bias:
        out[f"{prefix}.bias"] = (cout,)


def official_kgdet_shapes(
    depth: int = 50,
    num_classes: int = 13,
    num_keypoints: int = 294,
    columns: Sequence[int] = (3, 5, 7),
    channels: int = 256,
    stacked_convs: int = 3,
    num_stages: int = 3,
    bn_buffers: bool = True,
) -> Dict[str, Shape]:
    """Ordered ``{official parameter/buffer name: shape}`` of the official KGDet detector.

    ``columns`` must be (3, 5, 7) and ``num_stages`` 3 for the released head (they are
    hard-wired there); other values describe the same naming scheme for tests.
    """
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"Official KGDet ResNet depth must be 50 or 101, got {depth}.")
    out: "OrderedDict[str, Shape]" = OrderedDict()
    # ---- backbone (mmdetection ResNet, Bottleneck, expansion 4)
    out["backbone.conv1.weight"] = (64, 3, 7, 7)
    _bn(out, "backbone.bn1", 64, bn_buffers)
    in_ch = 64
    stage_out = []
    for layer, num_blocks in enumerate(RESNET_BLOCKS[depth]):
        planes = 64 * 2**layer
        for b in range(num_blocks):
            p = f"backbone.layer{layer + 1}.{b}"
            out[f"{p}.conv1.weight"] = (planes, in_ch, 1, 1)
            _bn(out, f"{p}.bn1", planes, bn_buffers)
            out[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(out, f"{p}.bn2", planes, bn_buffers)
            out[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn(out, f"{p}.bn3", planes * 4, bn_buffers)
            if b == 0:
                out[f"{p}.downsample.0.weight"] = (planes * 4, in_ch, 1, 1)
                _bn(out, f"{p}.downsample.1", planes * 4, bn_buffers)
            in_ch = planes * 4
        stage_out.append(in_ch)
    # ---- neck (FPN2, start_level=1, extra convs on inputs, GN everywhere)
    for i, cin in enumerate(stage_out[1:]):
        _conv_gn(out, f"neck.lateral_convs.{i}", cin, channels, 1)
    for i in range(3):
        _conv_gn(out, f"neck.fpn_convs.{i}", channels, channels, 3)
    _conv_gn(out, "neck.fpn_convs.3", stage_out[-1], channels, 3)
    _conv_gn(out, "neck.fpn_convs.4", channels, channels, 3)
    # ---- head
    h = "bbox_head"
    for tower in ("cls_convs", "reg_convs"):
        for i in range(stacked_convs):
            _conv_gn(out, f"{h}.{tower}.{i}", channels, channels, 3)
    out[f"{h}.moment_transfer"] = (2,)
    num_points = sum(k * k for k in columns)
    two_k, two_p = 2 * num_keypoints, 2 * num_points
    b1 = f"{h}.kp_rep_block_1"
    _conv(out, f"{b1}.cls_conv", channels, channels, 3)
    _conv(out, f"{b1}.cls_out", channels, num_classes, 1)
    _conv(out, f"{b1}.keypts_conv", channels, channels, 3)
    _conv(out, f"{b1}.keypts_out", channels, two_k, 1)
    _conv(out, f"{b1}.reppts_out", two_k, two_p, 1)
    cat = channels * len(columns)
    for s in range(2, num_stages + 1):
        b = f"{h}.kp_rep_block_{s}"
        for k in columns:
            _conv(out, f"{b}.cls_dfmconv_{k}", channels, channels, k, bias=False)
        _conv(out, f"{b}.cls_out", cat, num_classes, 1)
        for k in columns:
            _conv(out, f"{b}.keypts_dfmconv_{k}", channels, channels, k, bias=False)
        _conv(out, f"{b}.keypts_out", cat, two_k, 1)
        _conv(out, f"{b}.reppts_out", two_k, two_p, 1)
    return out
