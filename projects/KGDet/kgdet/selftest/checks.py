"""The checks of ``python -m kgdet.selftest`` and of the ``cuda`` tests (one implementation).

Every check takes the device ("cpu" or "cuda") and returns one line of detail when it passes,
raises :class:`CheckSkipped` with the reason when it cannot run here, and raises any other
exception (an ``AssertionError`` naming what differs) when it fails.
"""

import contextlib
import copy
import math
import os
import socket
from typing import Dict, Iterator, List, Optional
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from detectron2.utils.events import EventStorage

from ..modeling.deform_conv import KGDeformConv, _detectron2_cuda_available, detectron2_cuda_op_runs
from ..solver import build_optimizer
from .models import HEAD_VARIANTS, build_variant, random_batch, spread_head, variant_cfg

__all__ = [
    "HEAD_VARIANTS",
    "CheckSkipped",
    "cuda_skip_reason",
    "check_deform_conv",
    "check_training",
    "check_inference_parity",
    "check_ddp",
    "check_synthetic_training",
    "check_export_torchscript",
    "check_export_onnx",
]


class CheckSkipped(Exception):
    """The check cannot run in this environment; the message says why."""


def cuda_skip_reason(need_detectron2_ops: bool = False) -> Optional[str]:
    """Why CUDA checks cannot run here (None when they can).

    ``need_detectron2_ops``: also require Detectron2 compiled with CUDA ops whose
    ``deform_conv`` runs on this GPU.
    """
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        return f"CUDA is not available (torch {torch.__version__}, built for CUDA {built})"
    if need_detectron2_ops:
        if not _detectron2_cuda_available():
            return "Detectron2 was built without CUDA ops (detectron2._C.has_cuda() is False)"
        if not detectron2_cuda_op_runs(torch.device("cuda", torch.cuda.current_device())):
            return "Detectron2's CUDA deform_conv does not run on this GPU (architecture)"
    return None


def _require(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        reason = cuda_skip_reason()
        if reason:
            raise CheckSkipped(reason)
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ------------------------------------------------------------------------------------------
# deformable convolution
# ------------------------------------------------------------------------------------------
def check_deform_conv(device: str) -> str:
    """Every ``DEFORM_IMPL`` against torchvision's ``deform_conv2d`` on ``device``: values and
    gradients w.r.t. input, offset and weight (k = 3 and 7, float32), each also with a
    channels-last weight (``MODEL.KGDET.CHANNELS_LAST``). On CPU Detectron2's op has no
    backward (its forward is compared); on CUDA it is compared when its CUDA ops run here."""
    dev = _require(device)
    impls = ["gather", "grid_sample", "torchvision"]
    notes = []
    if dev.type == "cpu":
        impls.append("detectron2 (forward)")
    else:
        reason = cuda_skip_reason(need_detectron2_ops=True)
        if reason is None:
            impls.append("detectron2")
        else:
            notes.append(f"detectron2 not compared: {reason}")
    worst_value = worst_grad = 0.0
    gen = torch.Generator().manual_seed(0)
    for k in (3, 7):
        cin, cout, h, w, pad = 8, 6, 9, 11, k // 2
        x = torch.randn(2, cin, h, w, generator=gen).to(dev).requires_grad_()
        offset = (torch.randn(2, 2 * k * k, h, w, generator=gen) * 3).to(dev).requires_grad_()
        weight = torch.randn(cout, cin, k, k, generator=gen).to(dev)
        ref = tv_deform_conv2d(x, offset, weight.requires_grad_(), padding=(pad, pad))
        grad_out = torch.randn(ref.shape, generator=gen).to(dev)
        ref_grads = torch.autograd.grad(ref, (x, offset, weight), grad_out)
        for name in impls:
            impl = name.split()[0]
            for channels_last in (False, True):
                module = KGDeformConv(cin, cout, k, pad, impl=impl).to(dev)
                with torch.no_grad():
                    module.weight.copy_(weight)
                if channels_last:
                    module.to(memory_format=torch.channels_last)
                label = f"{impl} k={k}" + (" channels-last" if channels_last else "")
                if name.endswith("(forward)"):
                    with torch.no_grad():
                        out = module(x, offset)
                    worst_value = max(worst_value, _check_close(out, ref, 1e-4, label))
                    continue
                out = module(x, offset)
                grads = torch.autograd.grad(out, (x, offset, module.weight), grad_out)
                worst_value = max(worst_value, _check_close(out, ref, 1e-4, label))
                for what, got, expected in zip(("input", "offset", "weight"), grads, ref_grads):
                    diff = _check_close(got, expected, 1e-3, f"{label} grad w.r.t. {what}")
                    worst_grad = max(worst_grad, diff)
    detail = (
        f"{', '.join(impls)} equal torchvision (largest difference: values {worst_value:.1e}, "
        f"gradients {worst_grad:.1e} relative)"
    )
    return "; ".join([detail] + notes)


def _check_close(got: Tensor, expected: Tensor, tol: float, label: str) -> float:
    """Largest difference relative to max(1, |expected|); AssertionError above ``tol``."""
    scale = expected.detach().double().abs().clamp(min=1.0)
    diff = float(((got.detach().double() - expected.detach().double()).abs() / scale).max())
    if not diff <= tol:
        raise AssertionError(f"{label}: differs from torchvision by {diff:.2e} (> {tol:g})")
    return diff


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def check_training(
    configs_dir: str, device: str, amp: bool, iters: int = 3, size=(96, 128), images: int = 2
) -> str:
    """A few training steps of the KGDet synthetic config on random inputs: losses finite,
    weights moved. With ``amp``: autocast (float16 on CUDA, bfloat16 on CPU) with a
    ``GradScaler``, channels-last weights and fused AdamW with the joint gradient clipping (the
    settings users combine for speed); λ (the moment transform's scale) must keep finite
    gradients."""
    dev = _require(device)
    opts = ["SOLVER.OPTIMIZER", "ADAMW", "SOLVER.BASE_LR", "0.0005"]
    if amp:
        opts += ["MODEL.KGDET.CHANNELS_LAST", "True", "SOLVER.ADAMW_FUSED", "True"]
    cfg = variant_cfg(configs_dir, "kgdet", dev.type, opts)
    model = build_variant(cfg)
    optimizer = build_optimizer(cfg, model)
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    batch = random_batch(model, dev.type, size, images)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    totals = []
    for step in range(iters):
        with EventStorage(step), torch.autocast(dev.type, dtype=dtype, enabled=amp):
            losses = model(batch)
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        if bad:
            raise AssertionError(f"step {step}: non-finite losses {bad}")
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        lam = getattr(model.head, "moment_lambda", None)
        if lam is not None and lam.grad is not None and not torch.isfinite(lam.grad).all():
            raise AssertionError(f"step {step}: the moment transform's λ has a non-finite gradient")
        scaler.step(optimizer)
        scaler.update()
        totals.append(float(total.detach()))
    moved = max(
        float((p.detach() - before[n]).abs().max())
        for n, p in model.named_parameters()
        if n in before
    )
    if not moved > 0:
        raise AssertionError("the weights did not change")
    mode = f"AMP {str(dtype).split('.')[-1]}, channels-last, fused AdamW" if amp else "float32"
    scale = f", loss scale {scaler.get_scale():g}" if amp else ""
    return f"{iters} steps ({mode}): total loss {totals[0]:.3f} -> {totals[-1]:.3f}{scale}"


# ------------------------------------------------------------------------------------------
# inference parity
# ------------------------------------------------------------------------------------------
def check_inference_parity(configs_dir: str, device: str, size=(128, 160)) -> str:
    """The same weights on the CPU and on ``device`` (CUDA): dense head outputs and detections
    agree. On CPU there is nothing to compare (SKIP)."""
    dev = _require(device)
    if dev.type == "cpu":
        raise CheckSkipped("compares CPU and CUDA: run with --device cuda")
    cfg = variant_cfg(configs_dir, "kgdet", "cpu")
    cpu_model = build_variant(cfg).eval()
    spread_head(cpu_model)
    gpu_model = copy.deepcopy(cpu_model).to(dev)
    image = random_batch(cpu_model, "cpu", size, 1)[0]["image"]
    outputs = []
    for model, d in ((cpu_model, "cpu"), (gpu_model, dev)):
        with torch.no_grad():
            images = model.preprocess_image([{"image": image.to(d)}])
            features = model.backbone(images.tensor)
            preds = model.head([features[f] for f in model.head_in_features])
            dets = model([{"image": image.to(d)}])[0]["instances"].to("cpu")
        outputs.append((_flatten(preds), dets))
    (dense_cpu, det_cpu), (dense_gpu, det_gpu) = outputs
    worst = 0.0
    for (name, a), (_, b) in zip(dense_cpu, dense_gpu):
        worst = max(worst, _check_close(b.cpu(), a, 2e-3, f"dense output {name}"))
    if len(det_cpu) != len(det_gpu):
        raise AssertionError(f"{len(det_cpu)} detections on the CPU, {len(det_gpu)} on {device}")
    top = min(len(det_cpu), 20)  # the best-scored ones: ties further down may swap
    box = _max_diff(det_cpu.pred_boxes.tensor[:top], det_gpu.pred_boxes.tensor[:top])
    score = _max_diff(det_cpu.scores[:top], det_gpu.scores[:top])
    if box > 0.5 or score > 1e-3:
        raise AssertionError(f"top detections differ: boxes by {box:.2e} px, scores by {score:.2e}")
    return (
        f"dense outputs within {worst:.1e} (relative), {len(det_cpu)} detections on both, "
        f"top {top}: boxes within {box:.1e} px, scores within {score:.1e}"
    )


def _flatten(preds) -> List:
    flat = []
    for t, stage in enumerate(preds):
        for key in sorted(stage):
            value = stage[key]
            if value is None:
                continue
            for lvl, x in enumerate(value if isinstance(value, (list, tuple)) else [value]):
                flat.append((f"s{t + 1}.{key}[{lvl}]", x))
    return flat


# ------------------------------------------------------------------------------------------
# DDP
# ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process_group(backend: str) -> Iterator[None]:
    """A one-process group (gloo on CPU, nccl on CUDA), unless one exists already."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_ddp(configs_dir: str, variant: str, device: str, iters: int = 2) -> str:
    """Head ``variant`` wrapped in DistributedDataParallel **without** find_unused_parameters
    (as Detectron2's trainer wraps it): ``iters`` training steps, and after each backward
    every trainable parameter has a gradient (DDP's reducer raises on the next step otherwise)."""
    dev = _require(device)
    if not dist.is_available():
        raise CheckSkipped("torch.distributed is not available in this torch build")
    cfg = variant_cfg(configs_dir, variant, dev.type)
    model = build_variant(cfg)
    optimizer = build_optimizer(cfg, model)
    batch = random_batch(model, dev.type, (64, 96), 2)
    with _process_group("nccl" if dev.type == "cuda" else "gloo"):
        ids = None
        if dev.type == "cuda":
            ids = [dev.index if dev.index is not None else torch.cuda.current_device()]
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=False
        )
        for step in range(iters):
            with EventStorage(step):
                losses = ddp(batch)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            if missing:
                raise AssertionError(
                    f"{variant}: {len(missing)} trainable parameters without gradient, e.g. "
                    f"{missing[:3]}"
                )
            optimizer.step()
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    return f"{iters} DDP steps, all {trainable} trainable parameters receive gradients"


# ------------------------------------------------------------------------------------------
# synthetic training
# ------------------------------------------------------------------------------------------
def check_synthetic_training(
    configs_dir: str, device: str, workdir: str, iters: int = 30, num_images: int = 16
) -> str:
    """configs/kgdet_synth.yaml trained ``iters`` iterations with Detectron2's trainer on a
    small synthetic set rendered into ``workdir`` (its data loader, mapper and optimizer; AMP
    on CUDA): the losses stay finite and the mean total loss of the last 5 iterations is below
    that of the first 5."""
    from detectron2.data import build_detection_train_loader
    from detectron2.engine import AMPTrainer, SimpleTrainer

    from ..data import KGDetDatasetMapper
    from ..data.synthetic import SYNTHETIC_DATASETS, register_synthetic_dataset

    dev = _require(device)
    layout = SYNTHETIC_DATASETS["kgdet_synth_train"][0]
    name = f"kgdet_selftest_{num_images}"
    from detectron2.data import DatasetCatalog

    if name not in DatasetCatalog.list():
        register_synthetic_dataset(name, layout, num_images, seed=7, cache_root=workdir)
    cfg = variant_cfg(configs_dir, "kgdet", dev.type, ["SOLVER.IMS_PER_BATCH", "2"])
    cfg.DATASETS.TRAIN = (name,)
    model = build_variant(cfg)
    loader = build_detection_train_loader(cfg, mapper=KGDetDatasetMapper(cfg, is_train=True))
    optimizer = build_optimizer(cfg, model)
    if dev.type == "cuda":
        trainer = AMPTrainer(model, loader, optimizer)
    else:
        trainer = SimpleTrainer(model, loader, optimizer)
    trainer.train(0, iters)
    history = trainer.storage.history("total_loss").values()
    totals = [v for v, _ in history]
    if len(totals) < iters or not all(math.isfinite(v) for v in totals):
        raise AssertionError(f"total losses {totals}")
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    if not last < first:
        raise AssertionError(f"the total loss did not fall: {first:.3f} -> {last:.3f}")
    amp = ", AMP float16" if dev.type == "cuda" else ""
    return (
        f"{iters} iterations of 2 images ({cfg.INPUT.MIN_SIZE_TRAIN[0]} px{amp}): mean total "
        f"loss of the first 5 {first:.3f}, of the last 5 {last:.3f}"
    )


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------
def _export_reference(model: nn.Module, image: Tensor) -> Dict[str, Tensor]:
    from ..export import export_inference

    with torch.no_grad():
        inst = export_inference(model, [{"image": image}])[0]["instances"]
    fields = dict(inst.get_fields())
    fields["pred_boxes"] = fields["pred_boxes"].tensor
    return {k: v.cpu() for k, v in fields.items()}


def _compare_exported(ref: Dict[str, Tensor], out: Dict[str, Tensor], fmt: str) -> str:
    n_ref, n_out = len(ref["scores"]), len(out["scores"])
    if n_ref != n_out:
        raise AssertionError(f"{fmt}: {n_out} detections, PyTorch {n_ref}")
    if n_ref == 0:
        raise AssertionError(f"{fmt}: no detections to compare")
    diffs = {
        "boxes": _max_diff(out["pred_boxes"].cpu(), ref["pred_boxes"]),
        "scores": _max_diff(out["scores"].cpu(), ref["scores"]),
    }
    if diffs["boxes"] > 0.05 or diffs["scores"] > 1e-4:
        raise AssertionError(f"{fmt} differs from PyTorch: {diffs}")
    return f"{n_ref} detections as PyTorch's (boxes within {diffs['boxes']:.1e} px)"


def _export_model_and_image(configs_dir: str, device: str):
    cfg = variant_cfg(configs_dir, "kgdet", device)
    model = build_variant(cfg).eval()
    spread_head(model)
    image = random_batch(model, device, (128, 160), 1)[0]["image"]
    return cfg, model, image


def check_export_torchscript(configs_dir: str, device: str, workdir: str) -> str:
    """Trace on ``device``, save, load with ``ExportedPredictor``'s loader on ``device``, and
    compare with eager PyTorch on the same image."""
    from ..export import export_model, load_exported_model

    dev = _require(device)
    cfg, model, image = _export_model_and_image(configs_dir, dev.type)
    path = os.path.join(workdir, f"model_{dev.type}.ts")
    export_model(model, cfg, image, path, "torchscript")
    exported = load_exported_model(path, dev.type)
    ref = _export_reference(model, image)
    return "TorchScript: " + _compare_exported(ref, exported(image), "TorchScript")


def check_export_onnx(configs_dir: str, device: str, workdir: str) -> str:
    """Export to ONNX (opset 19, DeformConv) on the CPU, run it with ONNX Runtime on ``device``
    (CUDA execution provider for "cuda") and compare with eager PyTorch."""
    dev = _require(device)
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError as e:
        raise CheckSkipped(f"{e.name} is not installed (pip install -e .[deploy])")
    if dev.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise CheckSkipped(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"({ort.get_available_providers()}): pip install -e .[deploy-gpu]"
        )
    from ..export import export_model, load_exported_model

    cfg, model, image = _export_model_and_image(configs_dir, "cpu")
    path = os.path.join(workdir, "model.onnx")
    export_model(model, cfg, image, path, "onnx")
    exported = load_exported_model(path, dev.type)
    providers = exported.session.get_providers()
    result = _compare_exported(_export_reference(model, image), exported(image), "ONNX")
    return f"ONNX Runtime {ort.__version__} ({providers[0]}): {result}"
