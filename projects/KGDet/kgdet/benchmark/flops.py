"""FLOPs of one inference with fvcore (through Detectron2's ``FlopCountAnalysis``), deformable
convolutions counted apart (the paper's counter ignores them, Table 1)."""

import numpy as np
import warnings
from collections import Counter
from typing import Any, Dict, List
import torch

__all__ = ["count_flops"]


def _deform_conv_flop_handle(inputs: List[Any], outputs: List[Any]) -> Counter:
    """Multiply-accumulates of a deformable conv counted like a dense conv (fvcore's unit):
    prod(output shape) * Cin/groups * kh * kw. Bilinear sampling is not counted."""
    from fvcore.nn.jit_handles import get_shape

    out_shape = get_shape(outputs[0])
    weight_shape = None
    for value in inputs:  # torchvision::deform_conv2d(input, weight, offset, ...) or _DeformConv
        shape = get_shape(value)
        if shape is not None and len(shape) == 4 and value is not inputs[0]:
            weight_shape = shape
            break
    if out_shape is None or weight_shape is None:
        return Counter()
    return Counter({"deform_conv": int(np.prod(out_shape)) * int(np.prod(weight_shape[1:]))})


def _flatten_tensors(value: Any) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _flatten_tensors(v)]
    return []  # None and non-tensor leaves


class _AllOutputs(torch.nn.Module):
    """Calls ``module`` and returns every tensor it produced as a flat tuple, so that a JIT trace
    keeps all of the module's work (tracing drops computations that reach no output)."""

    def __init__(self, module: torch.nn.Module, list_input: bool = False):
        super().__init__()
        self.module = module
        self.list_input = list_input

    def forward(self, *tensors: torch.Tensor):
        out = self.module(list(tensors)) if self.list_input else self.module(*tensors)
        return tuple(_flatten_tensors(out))


def _new_analysis(model: torch.nn.Module, inputs: Any, detectron2_inputs: bool):
    from fvcore.nn import FlopCountAnalysis as FvcoreFlopCountAnalysis

    from detectron2.utils.analysis import _IGNORED_OPS, FlopCountAnalysis

    if detectron2_inputs:
        analysis = FlopCountAnalysis(model, inputs)
    else:
        analysis = FvcoreFlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**{k: None for k in _IGNORED_OPS})
    analysis.set_op_handle(
        **{
            "torchvision::deform_conv2d": _deform_conv_flop_handle,
            "prim::PythonOp._DeformConv": _deform_conv_flop_handle,
        }
    )
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


def count_flops(model: torch.nn.Module, image: torch.Tensor, full_fpn: bool = False) -> Dict:
    """fvcore FLOPs (multiply-accumulates, fvcore's and the paper's unit) of one inference, in G.

    Returns the total without deformable convs (the paper's counting, Table 1), the
    deformable convs apart (as dense-conv MACs), backbone+FPN / head / pre- and post-processing
    counts, per-operator counts and the ops fvcore could not count.

    A JIT trace of the whole detector drops work whose result reaches no output (e.g. the class
    logits of non-final KGDet stages, unused FPN levels), which eager inference still executes.
    So the backbone and the head are traced alone with all their outputs kept, and the
    whole-model trace only contributes pre/post-processing. ``full_fpn``: KGDet's backbone
    computes every FPN level (``full_fpn_test``), as in the paper's Table 1.
    """
    from kgdet.modeling.deform_conv import KGDeformConv

    dcns = [m for m in model.modules() if isinstance(m, KGDeformConv)]
    saved_impls = [m.impl for m in dcns]
    has_full_fpn = hasattr(model.backbone, "full_fpn_test")
    saved_full_fpn = getattr(model.backbone, "full_fpn_test", None)
    inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
    model.eval()
    try:
        for m in dcns:  # a traceable op with a known name for the handle
            m.impl = "torchvision"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            whole = _new_analysis(model, inputs, detectron2_inputs=True)
            whole_ops = Counter(whole.by_operator())
            whole_by_module = whole.by_module()
            whole_by_module_ops = whole.by_module_and_operator()
            rest = whole.total()
            for name in ("model.backbone", "model.head"):
                rest -= whole_by_module.get(name, 0)
                whole_ops.subtract(whole_by_module_ops.get(name, {}))
            unsupported = Counter(whole.unsupported_ops())

            if full_fpn and has_full_fpn:
                model.backbone.full_fpn_test = True
            with torch.no_grad():
                tensor = model.preprocess_image(inputs).tensor
                features = model.backbone(tensor)
                features = [features[f] for f in model.head_in_features]
            backbone = _new_analysis(_AllOutputs(model.backbone), (tensor,), False)
            head = _new_analysis(_AllOutputs(model.head, list_input=True), tuple(features), False)
            by_operator = whole_ops + Counter(backbone.by_operator()) + Counter(head.by_operator())
            backbone_total, head_total = backbone.total(), head.total()
            head_dcn = head.by_operator().get("deform_conv", 0)
            unsupported.update(backbone.unsupported_ops())
            unsupported.update(head.unsupported_ops())
    finally:
        for m, impl in zip(dcns, saved_impls):
            m.impl = impl
        if has_full_fpn:
            model.backbone.full_fpn_test = saved_full_fpn
    total = backbone_total + head_total + rest
    dcn = by_operator.get("deform_conv", 0)
    return {
        "input": [3, image.shape[1], image.shape[2]],
        "full_fpn": bool(full_fpn and has_full_fpn),
        "gflops_without_dcn": round((total - dcn) / 1e9, 3),
        "dcn_gmacs": round(dcn / 1e9, 3),
        "gflops_with_dcn": round(total / 1e9, 3),
        "backbone_fpn_gflops": round(backbone_total / 1e9, 3),
        "head_gflops_without_dcn": round((head_total - head_dcn) / 1e9, 3),
        "pre_post_processing_gflops": round(rest / 1e9, 3),
        "by_operator_g": {k: round(v / 1e9, 3) for k, v in sorted(by_operator.items()) if v},
        "uncounted_ops": dict(unsupported),
    }
