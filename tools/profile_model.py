#!/usr/bin/env python
"""Where a KGDet inference (or training step) spends its time: a torch-profiler breakdown.

Every module of interest (ResNet, FPN, towers, each stage, each deformable conv and 1x1 conv of
the stages) and the meta-architecture's pre/post-processing are wrapped in
``torch.profiler.record_function`` ranges through forward hooks, so the profiler reports their
inclusive CPU time next to the usual per-operator table.

    python tools/profile_model.py --config-file configs/kgdet_R50.yaml [--size 800 1333] \
        [--runs 3] [--threads 2] [--train] [--out docs/benchmark] [KEY VALUE ...]

Writes ``<out>/profile_<config>[_train].txt`` (both tables) and ``.json`` (the breakdown).
"""

import argparse
import functools
import json
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from kgdet.benchmark import (
    build_benchmark_model,
    make_image,
    make_training_input,
    model_num_classes,
    model_num_keypoints,
)
from kgdet.file_io import atomic_output

ROOT_LABEL = "total"


def _module_labels(model: nn.Module) -> Dict[str, nn.Module]:
    """label -> module for the parts of a dense detector worth timing separately."""
    from kgdet.modeling.deform_conv import KGDeformConv

    labels: Dict[str, nn.Module] = {"backbone+fpn": model.backbone}
    bottom_up = getattr(model.backbone, "bottom_up", None)
    if bottom_up is not None:
        labels["backbone+fpn/resnet"] = bottom_up
    labels["head"] = model.head
    for name, module in model.head.named_children():
        if name != "stages":
            labels[f"head/{name}"] = module
    for t, stage in enumerate(getattr(model.head, "stages", [])):
        prefix = f"head/stage{t + 1}"
        labels[prefix] = stage
        for name, module in stage.named_modules():
            if isinstance(module, (KGDeformConv, nn.Conv2d)):
                labels[f"{prefix}/{name}"] = module
    return labels


def instrument(model: nn.Module) -> List:
    """Wrap modules and pre/post-processing in record_function ranges; returns hook handles."""
    handles = []
    for label, module in _module_labels(model).items():
        stack: List[record_function] = []

        def pre_hook(_module, _inputs, label=label, stack=stack):
            scope = record_function(label)
            scope.__enter__()
            stack.append(scope)

        def post_hook(_module, _inputs, _outputs, stack=stack):
            stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    for method, label in (
        ("preprocess_image", "preprocess"),
        ("forward_inference", "postprocess"),
        ("forward_training", "losses"),
    ):
        if hasattr(model, method):
            original = getattr(model, method)

            @functools.wraps(original)
            def wrapped(*args, _original=original, _label=label, **kwargs):
                with record_function(_label):
                    return _original(*args, **kwargs)

            setattr(model, method, wrapped)
    return handles


def breakdown(prof, runs: int) -> List[Tuple[str, float, int]]:
    """(label, inclusive ms per run, calls per run) for the record_function labels, plus the
    derived parts (FPN, head other, other)."""
    events = {e.key: (e.cpu_time_total / 1e3 / runs, e.count // runs) for e in prof.key_averages()}
    wanted = [k for k in events if k == ROOT_LABEL or k.split("/")[0] in _TOP_LABELS]
    rows = {k: events[k] for k in wanted}

    def ms(label: str) -> float:
        return rows.get(label, (0.0, 0))[0]

    derived = {}
    if "backbone+fpn/resnet" in rows:
        derived["backbone+fpn/fpn (derived)"] = ms("backbone+fpn") - ms("backbone+fpn/resnet")
    head_children = [
        k for k in rows if k.startswith("head/") and k.count("/") == 1 and k != "head/other"
    ]
    derived["head/other: moment transform, flip fusion (derived)"] = ms("head") - sum(
        ms(k) for k in head_children
    )
    for t in range(1, 10):
        stage = f"head/stage{t}"
        if stage not in rows:
            break
        parts = [k for k in rows if k.startswith(stage + "/")]
        derived[f"{stage}/other: offsets, residuals (derived)"] = ms(stage) - sum(
            ms(k) for k in parts
        )
    top = ["preprocess", "backbone+fpn", "head", "postprocess", "losses"]
    derived["other: backward, optimizer, glue (derived)"] = ms(ROOT_LABEL) - sum(ms(k) for k in top)
    out = [(k, v[0], v[1]) for k, v in rows.items()]
    out += [(k, v, 1) for k, v in derived.items()]
    order = {name: i for i, name in enumerate([ROOT_LABEL] + top)}
    return sorted(out, key=lambda r: (order.get(r[0].split("/")[0], 99), r[0]))


_TOP_LABELS = {"preprocess", "backbone+fpn", "head", "postprocess", "losses"}


def format_breakdown(rows: List[Tuple[str, float, int]]) -> str:
    total = next(ms for label, ms, _ in rows if label == ROOT_LABEL)
    lines = [f"{'part':<62}{'ms/run':>10}{'%':>8}{'calls':>7}"]
    for label, ms, calls in rows:
        indent = "  " * label.count("/")
        lines.append(f"{indent + label:<62}{ms:>10.1f}{100 * ms / total:>7.1f}%{calls:>7}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config-file", default="configs/kgdet_R50.yaml", metavar="FILE", help="KGDet config"
    )
    parser.add_argument(
        "--size", nargs=2, type=int, default=[800, 1333], metavar=("H", "W"), help="input size"
    )
    parser.add_argument("--runs", type=int, default=3, help="profiled runs (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--train", action="store_true", help="profile a training step instead")
    parser.add_argument("--out", default="docs/benchmark", help="directory for the tables")
    parser.add_argument("--row-limit", type=int, default=30, help="rows of the operator table")
    cli.add_debug_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    args = parser.parse_args(argv)
    cli.pop_debug_flag(args.opts)
    return cli.run_main(lambda: _main(args), "profile_model.py", argv)


def _main(args: argparse.Namespace) -> None:
    from kgdet import get_kgdet_cfg

    get_kgdet_cfg(args.config_file, args.opts)  # ConfigError: one line, exit 2
    torch.set_num_threads(args.threads)

    from detectron2.utils.events import EventStorage

    import kgdet  # noqa: F401  (registers the meta-architecture)

    model = build_benchmark_model("kgdet", config_file=args.config_file, opts=args.opts)
    height, width = args.size
    image = make_image(height, width)
    if args.train:
        model.train()
        batch = [make_training_input(image, model_num_classes(model), model_num_keypoints(model))]
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9)
        storage = EventStorage(0)

        def step():
            with storage:
                losses = model(batch)
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()

    else:
        inputs = [{"image": image, "height": height, "width": width}]

        def step():
            with torch.no_grad():
                model(inputs)

    instrument(model)
    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.runs):
            with record_function(ROOT_LABEL):
                step()

    rows = breakdown(prof, args.runs)
    mode = "training step" if args.train else "inference"
    title = (
        f"KGDet {mode} profile: {args.config_file} {' '.join(args.opts)} input {height}x{width}, "
        f"{args.threads} threads, {args.runs} runs, load average {os.getloadavg()}"
    )
    module_table = format_breakdown(rows)
    op_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.row_limit)
    text = f"{title}\n\nModule breakdown (inclusive CPU time)\n{module_table}\n\n"
    text += f"Operators by self CPU time ({args.runs} runs)\n{op_table}\n"
    print(text)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.splitext(os.path.basename(args.config_file))[0]
    base = os.path.join(args.out, f"profile_{stem}{'_train' if args.train else ''}")
    payload = {
        "title": title,
        "breakdown_ms_per_run": {label: round(ms, 2) for label, ms, _ in rows},
    }
    for path, content in ((base + ".txt", text), (base + ".json", json.dumps(payload, indent=2))):
        with atomic_output(path) as f:
            f.write(content)
    print(f"wrote {base}.txt and {base}.json")


if __name__ == "__main__":
    sys.exit(main())
