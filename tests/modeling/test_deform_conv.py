"""KGDeformConv: every implementation equals torchvision's deform_conv2d (values and gradients)."""

from pathlib import Path
import pytest
import torch
from torchvision.ops import deform_conv2d

from kgdet.modeling.deform_conv import (
    KGDeformConv,
    deform_conv2d_gather,
    deform_conv2d_grid_sample,
    detectron2_cuda_op_runs,
)
from kgdet.selftest.checks import check_deform_conv, cuda_skip_reason

FAST_IMPLS = {"gather": deform_conv2d_gather, "grid_sample": deform_conv2d_grid_sample}


def _inputs(k, height, width, padding, dtype, offset_kind="random", channels=(5, 4), seed=0):
    """Batch-2 input, offsets (some far outside the map) and weight, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    cin, cout = channels
    ho, wo = height + 2 * padding - k + 1, width + 2 * padding - k + 1
    x = torch.randn(2, cin, height, width, generator=gen, dtype=dtype)
    shape = (2, 2 * k * k, ho, wo)
    if offset_kind == "random":
        offset = torch.randn(shape, generator=gen, dtype=dtype) * 3
        offset[:, ::7] *= 10  # taps pointing far outside the map
    elif offset_kind == "integer":  # sampling exactly on grid points, where bilinear has kinks
        offset = torch.randint(-k - 3, k + 3, shape, generator=gen).to(dtype)
    else:
        raise ValueError(offset_kind)
    weight = torch.randn(cout, cin, k, k, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (x, offset, weight)]


def _value_and_grads(fn, x, offset, weight, grad_out=None):
    out = fn(x, offset, weight)
    if grad_out is None:
        grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, offset, weight), grad_out)
    return out, grads, grad_out


def _assert_matches_torchvision(fn, k, height, width, padding, dtype, offset_kind, atol):
    x, offset, weight = _inputs(k, height, width, padding, dtype, offset_kind)
    ref, ref_grads, grad_out = _value_and_grads(
        lambda *a: deform_conv2d(*a, padding=(padding, padding)), x, offset, weight
    )
    out, grads, _ = _value_and_grads(lambda *a: fn(*a, padding), x, offset, weight, grad_out)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    for name, got, expected in zip(("input", "offset", "weight"), grads, ref_grads):
        torch.testing.assert_close(got, expected, atol=atol, rtol=0, msg=f"grad w.r.t. {name}")


@pytest.mark.parametrize("impl", sorted(FAST_IMPLS))
@pytest.mark.parametrize("k", [3, 5, 7])
@pytest.mark.parametrize("height,width,extra_pad", [(7, 9, 0), (5, 3, 1), (1, 1, 0), (9, 5, -1)])
def test_matches_torchvision_float64(impl, k, height, width, extra_pad):
    padding = (k - 1) // 2 + extra_pad
    assert height + 2 * padding - k + 1 > 0 and width + 2 * padding - k + 1 > 0
    _assert_matches_torchvision(
        FAST_IMPLS[impl], k, height, width, padding, torch.float64, "random", atol=1e-10
    )


@pytest.mark.parametrize("impl", sorted(FAST_IMPLS))
@pytest.mark.parametrize("k", [3, 7])
def test_matches_torchvision_float32(impl, k):
    _assert_matches_torchvision(
        FAST_IMPLS[impl], k, 11, 13, k // 2, torch.float32, "random", atol=1e-4
    )


@pytest.mark.parametrize("k", [3, 5, 7])
def test_gather_matches_torchvision_on_grid_points(k):
    """Integer offsets (all taps on grid points, e.g. KGDet's zero-initialised points): the
    gather path uses torchvision's floor convention, so even the offset gradient is equal."""
    _assert_matches_torchvision(
        deform_conv2d_gather, k, 6, 7, k // 2, torch.float64, "integer", atol=1e-10
    )


def test_same_weights_on_every_path():
    """One module, one `weight` (Detectron2's name and shape), every impl gives the same output;
    its state dict loads into Detectron2's DeformConv, which agrees on CPU (forward)."""
    from detectron2.layers import DeformConv

    torch.manual_seed(1)
    module = KGDeformConv(6, 4, 5, 2)
    assert [name for name, _ in module.named_parameters()] == ["weight"]
    assert module.weight.shape == (4, 6, 5, 5)
    assert module.resolved_impl(torch.device("cpu")) == "gather"
    x = torch.randn(2, 6, 8, 7)
    offset = torch.randn(2, 50, 8, 7) * 2
    outputs = {}
    with torch.no_grad():
        for impl in ("auto", "gather", "grid_sample", "torchvision", "detectron2"):
            module.impl = impl
            outputs[impl] = module(x, offset)
        d2 = DeformConv(6, 4, 5, padding=2)
        d2.load_state_dict(module.state_dict())
        outputs["DeformConv"] = d2(x, offset)
    for impl, out in outputs.items():
        torch.testing.assert_close(out, outputs["torchvision"], atol=1e-5, rtol=0, msg=impl)


def test_trains_on_cpu_and_weight_cache_follows_updates():
    torch.manual_seed(2)
    module = KGDeformConv(3, 2, 3, 1)
    x = torch.randn(1, 3, 5, 6, requires_grad=True)
    offset = torch.randn(1, 18, 5, 6, requires_grad=True)
    module(x, offset).square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (x, offset, module.weight))

    with torch.no_grad():
        before = module(x, offset)
        module.weight.mul_(2)  # in-place update (optimizer step): the cached matrix must follow
        after = module(x, offset)
    torch.testing.assert_close(after, 2 * before)
    with torch.inference_mode():
        module(x, offset)
    module(x, offset).sum().backward()  # the inference-mode cache is not used with autograd on


def test_autocast_runs_in_float32():
    torch.manual_seed(3)
    module = KGDeformConv(4, 4, 3, 1)
    x = torch.randn(1, 4, 6, 6)
    offset = torch.randn(1, 18, 6, 6)
    expected = module(x, offset)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x.bfloat16(), offset.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, module(x.bfloat16().float(), offset.bfloat16().float()))
    assert (out - expected).abs().max() < 0.1


@pytest.mark.parametrize("impl", ["gather", "grid_sample", "torchvision"])
def test_empty_batch(impl):
    module = KGDeformConv(4, 2, 3, 1, impl=impl)
    x = torch.zeros(0, 4, 5, 6, requires_grad=True)
    out = module(x, torch.zeros(0, 18, 5, 6))
    assert out.shape == (0, 2, 5, 6)
    out.sum().backward()
    assert module.weight.grad is not None


def test_bad_input_errors():
    with pytest.raises(ValueError, match="DEFORM_IMPL"):
        KGDeformConv(4, 4, 3, 1, impl="cuda")
    module = KGDeformConv(4, 4, 3, 1)
    with pytest.raises(ValueError, match=r"offset shape .* expected \(1, 18, 5, 6\)"):
        module(torch.randn(1, 4, 5, 6), torch.randn(1, 50, 5, 6))
    with pytest.raises(ValueError, match="3 channels"):
        module(torch.randn(1, 3, 5, 6), torch.randn(1, 18, 5, 6))


def _strict_detectron2_op(calls):
    """Stand-in for ``detectron2.layers.deform_conv.deform_conv`` with the CUDA kernel's
    argument checks (its shape_check requires a contiguous weight), computing torchvision's
    result."""

    def op(x, offset, weight, stride, padding, dilation, groups, deformable_groups):
        if not weight.is_contiguous():
            raise RuntimeError("weight tensor has to be contiguous")
        calls.append(tuple(weight.shape))
        return deform_conv2d(x, offset, weight, padding=(padding, padding))

    return op


def test_channels_last_weight_reaches_detectron2_op_contiguous(monkeypatch):
    """MODEL.KGDET.CHANNELS_LAST turns every 4-D weight channels-last; Detectron2's CUDA op
    (what DEFORM_IMPL auto picks on a GPU) must still get a contiguous weight."""
    import detectron2.layers.deform_conv as d2_deform

    calls = []
    monkeypatch.setattr(d2_deform, "deform_conv", _strict_detectron2_op(calls))
    torch.manual_seed(5)
    module = KGDeformConv(6, 4, 3, 1, impl="detectron2")
    x = torch.randn(2, 6, 7, 8).contiguous(memory_format=torch.channels_last)
    offset = torch.randn(2, 18, 7, 8)
    expected = deform_conv2d(x, offset, module.weight.detach(), padding=(1, 1))
    module.to(memory_format=torch.channels_last)
    assert not module.weight.is_contiguous()
    with torch.no_grad():
        out = module(x, offset)
    assert calls == [(4, 6, 3, 3)]
    torch.testing.assert_close(out, expected)


def test_channels_last_model_with_detectron2_impl(monkeypatch):
    """The whole synthetic-config model with CHANNELS_LAST and the Detectron2 op path."""
    import detectron2.layers.deform_conv as d2_deform
    from detectron2.modeling import build_model

    from kgdet import get_kgdet_cfg

    calls = []
    monkeypatch.setattr(d2_deform, "deform_conv", _strict_detectron2_op(calls))
    config = str(Path(__file__).resolve().parents[2] / "configs" / "kgdet_synth.yaml")
    cfg = get_kgdet_cfg(
        config, ["MODEL.KGDET.CHANNELS_LAST", "True", "MODEL.KGDET.DEFORM_IMPL", "detectron2"]
    )
    model = build_model(cfg).eval()
    with torch.no_grad():
        model([{"image": torch.rand(3, 64, 96) * 255}])
    assert len(calls) >= 3  # one deformable conv per stage at least


@pytest.fixture
def _fresh_probe():
    detectron2_cuda_op_runs.cache_clear()
    yield
    detectron2_cuda_op_runs.cache_clear()


def test_auto_falls_back_when_detectron2_cuda_op_fails(monkeypatch, caplog, _fresh_probe):
    """A Detectron2 build with CUDA ops but not for this GPU's architecture: DEFORM_IMPL auto
    tries the op once, warns once and uses torchvision."""
    import kgdet.modeling.deform_conv as dc

    tries = []

    def failing(device):
        tries.append(device)
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(dc, "_detectron2_cuda_available", lambda: True)
    monkeypatch.setattr(dc, "_run_tiny_detectron2_op", failing)
    module = KGDeformConv(4, 4, 3, 1)
    with caplog.at_level("WARNING", logger="kgdet.modeling.deform_conv"):
        assert module.resolved_impl(torch.device("cuda", 0)) == "torchvision"
        assert module.resolved_impl(torch.device("cuda", 0)) == "torchvision"
    assert len(tries) == 1
    warnings = [r for r in caplog.records if "no kernel image" in r.getMessage()]
    assert len(warnings) == 1 and "torchvision" in warnings[0].getMessage()
    assert module.resolved_impl(torch.device("cpu")) == "gather"


def test_auto_uses_detectron2_when_its_cuda_op_runs(monkeypatch, _fresh_probe):
    import kgdet.modeling.deform_conv as dc

    monkeypatch.setattr(dc, "_detectron2_cuda_available", lambda: True)
    monkeypatch.setattr(dc, "_run_tiny_detectron2_op", lambda device: None)
    assert KGDeformConv(4, 4, 3, 1).resolved_impl(torch.device("cuda", 1)) == "detectron2"
    monkeypatch.setattr(dc, "_detectron2_cuda_available", lambda: False)
    detectron2_cuda_op_runs.cache_clear()
    assert KGDeformConv(4, 4, 3, 1).resolved_impl(torch.device("cuda", 1)) == "torchvision"


@pytest.mark.cuda
def test_cuda_paths_match_torchvision_and_detectron2():
    """On CUDA: gather, grid_sample, torchvision and (when its CUDA ops run here) Detectron2's
    op agree in values and gradients, with plain and channels-last weights
    (kgdet.selftest.checks.check_deform_conv, also run by python -m kgdet.selftest)."""
    reason = cuda_skip_reason()
    if reason:
        pytest.skip(reason)
    check_deform_conv("cuda")


@pytest.mark.cuda
def test_cuda_detectron2_op_matches_detectron2_deform_conv_module():
    """Detectron2's own DeformConv module on CUDA as the reference of every impl."""
    reason = cuda_skip_reason(need_detectron2_ops=True)
    if reason:
        pytest.skip(reason)
    from detectron2.layers import DeformConv

    torch.manual_seed(4)
    d2 = DeformConv(8, 6, 3, padding=1).cuda()
    x = torch.randn(2, 8, 9, 11, device="cuda", requires_grad=True)
    offset = (torch.randn(2, 18, 9, 11, device="cuda") * 3).requires_grad_()
    ref, ref_grads, grad_out = _value_and_grads(lambda a, b, w: d2(a, b), x, offset, d2.weight)
    for impl in ("auto", "torchvision", "gather", "detectron2"):
        module = KGDeformConv(8, 6, 3, 1, impl=impl).cuda()
        module.load_state_dict(d2.state_dict())
        out, grads, _ = _value_and_grads(
            lambda a, b, w: module(a, b), x, offset, module.weight, grad_out
        )
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=impl)
        for got, expected in zip(grads, ref_grads):
            torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3, msg=impl)


def test_nan_offsets_give_nan_output_not_an_index_error():
    """A diverged run must reach the trainer's non-finite-loss check, not crash in the gather."""
    from kgdet.modeling.deform_conv import KGDeformConv

    conv = KGDeformConv(4, 3, kernel_size=3, padding=1, impl="gather")
    x = torch.randn(1, 4, 5, 6)
    offset = torch.zeros(1, 18, 5, 6)
    offset[0, 0, 2, 3] = float("nan")
    out = conv(x, offset)
    assert out.shape == (1, 3, 5, 6)
    assert torch.isnan(out[0, :, 2, 3]).all()
    assert torch.isfinite(out[0, :, 0, 0]).all()
