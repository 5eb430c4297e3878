"""Export a KGDet model to TorchScript or ONNX by tracing, as Detectron2's
``tools/deploy/export_model.py`` does (``TracingAdapter`` around the model).

The exported graph takes one (3, H, W) float image tensor of any H and W (the image a
``DefaultPredictor`` feeds the model: resized, in ``cfg.INPUT.FORMAT``) and returns the flattened
``Instances`` of :func:`~kgdet.export.inference.export_inference`, named after their fields:
``pred_boxes`` (D, 4), ``pred_classes`` (D,), ``pred_keypoints`` (D, K, 3), ``scores`` (D,) and
``image_size`` (2,). What a predictor needs to know about the graph (output names, the baked-in
score threshold, the input format) is stored in the file itself: ONNX ``metadata_props``, or a
TorchScript extra file, both the JSON :data:`METADATA_KEY`.

Deformable convolutions: TorchScript traces the project's gather path (``embedding_bag`` +
matmul); ONNX uses the standard ``DeformConv`` operator (opset 19), which ONNX Runtime's CPU
kernel runs faster than the gather formulation exported as ``Gather`` + ``MatMul`` (measured in
README "Deploy"), or that gather formulation with ``deform_op="gather"`` (any opset >= 16).
"""

import contextlib
import copy
import json
import logging
import warnings
from typing import Dict, Iterator, List, Optional
import torch
from torch import Tensor, nn

from detectron2.export import TracingAdapter

from ..file_io import write_atomic
from ..modeling.deform_conv import KGDeformConv
from .fold import fold_frozen_batchnorm
from .inference import export_inference

__all__ = [
    "METADATA_KEY",
    "DEFORM_OPS",
    "prepare_for_export",
    "build_tracing_adapter",
    "export_torchscript",
    "export_onnx",
    "export_metadata",
    "register_deform_conv_symbolic",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "kgdet_export"
DEFORM_OPS = ("DeformConv", "gather")
INPUT_NAME = "image"
ONNX_OPSET = 19  # DeformConv appeared in opset 19


def prepare_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with frozen BNs folded into their convolutions."""
    model = copy.deepcopy(model).eval()
    folded = fold_frozen_batchnorm(model)
    logger.info("Folded %d frozen batch norms into their convolutions", folded)
    return model


@contextlib.contextmanager
def deform_impl(model: nn.Module, impl: str) -> Iterator[None]:
    """Temporarily run every :class:`KGDeformConv` of ``model`` with ``impl``."""
    dcns = [m for m in model.modules() if isinstance(m, KGDeformConv)]
    saved = [m.impl for m in dcns]
    try:
        for m in dcns:
            m.impl = impl
        yield
    finally:
        for m, old in zip(dcns, saved):
            m.impl = old


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the tracer's warnings about sizes and shape checks: sizes are traced as tensors
    on purpose (:mod:`kgdet.export.inference`), the input checks pass for the sample input; and
    torch >= 2.10's deprecation of TorchScript (``torch.jit.trace`` / ``save``), the format that
    ``--format torchscript`` exists to write."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning
        )
        yield


def build_tracing_adapter(model: nn.Module, image: Tensor) -> TracingAdapter:
    """``TracingAdapter`` of ``model`` on the sample ``image`` (3, H, W), calling
    :func:`export_inference`."""
    return TracingAdapter(model, [{"image": image}], inference_func=export_inference)


def output_names(model: nn.Module, image: Tensor) -> List[str]:
    """Names of the flattened outputs, in the adapter's order (fields sorted, then the size)."""
    with torch.no_grad():
        instances = export_inference(model, [{"image": image}])[0]["instances"]
    return sorted(instances.get_fields()) + ["image_size"]


def export_metadata(model: nn.Module, cfg, fmt: str, names: List[str], **extra) -> Dict:
    """What a predictor needs to know about an exported graph (stored inside the file)."""
    return {
        "format": fmt,
        "input_name": INPUT_NAME,
        "output_names": names,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "score_thresh": float(model.test_score_thresh),
        "num_classes": int(model.num_classes),
        "num_keypoints": int(model.num_keypoints),
        **extra,
    }


def export_torchscript(model: nn.Module, cfg, image: Tensor, path: str) -> Dict:
    """Trace ``model`` (already prepared) on ``image`` and save a TorchScript file at ``path``.

    The graph runs on the device type of ``model`` and ``image`` only: tracing records the
    device of every tensor the model creates (``kgdet.export.predictor.baked_devices``), so
    trace on the device the graph is to run on.

    Returns the metadata stored in the file. No partial file is left on failure.
    """
    names = output_names(model, image)
    adapter = build_tracing_adapter(model, image)
    with deform_impl(model, "gather"), torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    device = next(model.parameters()).device.type  # the graph creates tensors there
    metadata = export_metadata(model, cfg, "torchscript", names, deform_op="gather", device=device)

    def save(tmp: str) -> None:
        with _quiet_tracing():
            torch.jit.save(traced, tmp, _extra_files={METADATA_KEY: json.dumps(metadata)})

    write_atomic(path, save)
    return metadata


def _deform_conv2d_symbolic(
    g,
    input,
    weight,
    offset,
    mask,
    bias,
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    n_weight_grps,
    n_offset_grps,
    use_mask,
):
    """``torchvision::deform_conv2d`` -> ONNX ``DeformConv`` (opset 19); same offset layout
    ((dy, dx) per tap, row-major taps) and zero padding rule."""
    from torch.onnx import symbolic_helper

    args = symbolic_helper._get_const
    inputs = [input, weight, offset, bias]
    if args(use_mask, "b", "use_mask"):
        inputs.append(mask)
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[args(stride_h, "i", "stride_h"), args(stride_w, "i", "stride_w")],
        pads_i=[args(pad_h, "i", "pad_h"), args(pad_w, "i", "pad_w")] * 2,
        dilations_i=[args(dil_h, "i", "dil_h"), args(dil_w, "i", "dil_w")],
        group_i=args(n_weight_grps, "i", "n_weight_grps"),
        offset_group_i=args(n_offset_grps, "i", "n_offset_grps"),
    )


def register_deform_conv_symbolic(opset: int = ONNX_OPSET) -> None:
    """Export ``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (needs opset >= 19)."""
    torch.onnx.register_custom_op_symbolic(
        "torchvision::deform_conv2d", _deform_conv2d_symbolic, opset
    )


def export_onnx(
    model: nn.Module,
    cfg,
    image: Tensor,
    path: str,
    *,
    opset: int = ONNX_OPSET,
    deform_op: str = "DeformConv",
) -> Dict:
    """Trace ``model`` (already prepared) on ``image`` and save an ONNX file at ``path`` with
    dynamic height and width.

    Args:
        deform_op: "DeformConv" (ONNX's operator, needs ``opset`` >= 19) or "gather" (the
            project's gather formulation in standard operators, ``opset`` >= 16).

    Returns the metadata stored in the file. No partial file is left on failure.

    Raises:
        ValueError: for an unknown ``deform_op`` or an opset too old for it.
        ImportError: without the ``onnx`` package (``pip install -e .[deploy]``).
    """
    import onnx

    if deform_op not in DEFORM_OPS:
        raise ValueError(f"deform_op must be one of {DEFORM_OPS}, got {deform_op!r}")
    min_opset = 19 if deform_op == "DeformConv" else 16
    if opset < min_opset:
        raise ValueError(f"deform_op {deform_op!r} needs ONNX opset >= {min_opset}, got {opset}")
    if deform_op == "DeformConv":
        register_deform_conv_symbolic(opset)
    names = output_names(model, image)
    adapter = build_tracing_adapter(model, image)
    dynamic_axes = {INPUT_NAME: {1: "height", 2: "width"}}
    dynamic_axes.update({n: {0: "detections"} for n in names if n != "image_size"})
    impl = "torchvision" if deform_op == "DeformConv" else "gather"
    metadata = export_metadata(model, cfg, "onnx", names, deform_op=deform_op, opset=int(opset))

    def save(tmp: str) -> None:
        with deform_impl(model, impl), torch.no_grad(), _quiet_tracing():
            torch.onnx.export(
                adapter,
                adapter.flattened_inputs,
                tmp,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic_axes,
            )
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(proto, tmp)

    write_atomic(path, save)
    return metadata


def export_model(
    model: nn.Module, cfg, image: Tensor, path: str, fmt: str, **onnx_kwargs: Optional[int]
) -> Dict:
    """Prepare ``model`` (a copy: eval, frozen BNs folded) and export it as ``fmt``
    ("torchscript" or "onnx") to ``path``; returns the stored metadata."""
    prepared = prepare_for_export(model)
    if fmt == "torchscript":
        return export_torchscript(prepared, cfg, image, path)
    if fmt == "onnx":
        return export_onnx(prepared, cfg, image, path, **onnx_kwargs)
    raise ValueError(f"export format must be 'torchscript' or 'onnx', got {fmt!r}")
