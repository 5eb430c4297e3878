"""``tools/predict.py`` / ``kgdet.predict``: resumable after a kill, split over processes, every
file accounted for, inputs never touched; ``demo.py`` on the same folders. Synthetic images and
a small random-weight checkpoint of ``configs/kgdet_synth.yaml``, built here."""

import hashlib
import importlib.util
import json
import numpy as np
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
import cv2
import pytest
import torch

from detectron2.modeling import build_model

from kgdet import get_kgdet_cfg
from kgdet.predict import read_records
from kgdet.predict.records import ShardWriter, read_jsonl
from kgdet.predict.runner import rank_chunks, reason_kind
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(REPO_ROOT / "configs" / "kgdet_synth.yaml")
TINY = ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]
TINY += ["TEST.DETECTIONS_PER_IMAGE", "3"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(folder: Path, n: int) -> None:
    """``n`` garment-like pictures of three aspect ratios (so batches mix padded sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = [(64, 96), (96, 64), (80, 80)][i % 3]
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (w // 5, h // 6), (4 * w // 5, 5 * h // 6), (40, 90 + 5 * i, 220), -1)
        assert cv2.imwrite(str(folder / f"img_{i:03d}.png"), img)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, 18 images and the records of one uninterrupted single-process run."""
    root = tmp_path_factory.mktemp("predict")
    cfg = get_kgdet_cfg(CONFIG, TINY)
    torch.manual_seed(0)
    ckpt = root / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, str(ckpt))
    _images(root / "images", 18)
    tool = _load("kgdet_predict_tool", REPO_ROOT / "tools" / "predict.py")

    def argv(inputs, output, *extra):
        return ["--config-file", CONFIG, "--input", *map(str, inputs), "--output", str(output),
                "--confidence-threshold", "0.0", "--batch-size", "4", *extra,
                *TINY, "MODEL.WEIGHTS", str(ckpt)]  # fmt: skip

    assert tool.main(argv([root / "images"], root / "reference", "--num-workers", "0")) == 0
    reference = read_records(str(root / "reference"))
    assert [Path(r["file_name"]).name for r in reference] == [f"img_{i:03d}.png" for i in range(18)]
    assert any(r["instances"] for r in reference)
    return {"root": root, "tool": tool, "argv": argv, "reference": reference, "ckpt": ckpt}


def _shard_lines(folder: Path, kind: str = "predictions"):
    return [r for p in sorted(folder.glob(f"{kind}.rank*.jsonl")) for r in read_jsonl(str(p))[0]]


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_records(setup, tmp_path):
    out = tmp_path / "out"
    argv = setup["argv"]([setup["root"] / "images"], out, "--num-workers", "1")
    argv[argv.index("--batch-size") + 1] = "2"  # other batches than the reference: same records
    # The tool in a subprocess, each batch slowed down so that it is killed part-way.
    code = (
        "import sys, time, runpy\n"
        f"sys.argv = ['predict.py'] + {argv!r}\n"
        "import kgdet.predict.predictors as P\n"
        "run = P.EagerBatchPredictor.__call__\n"
        "P.EagerBatchPredictor.__call__ = lambda self, items: time.sleep(0.4) or run(self, items)\n"
        f"runpy.run_path({str(REPO_ROOT / 'tools' / 'predict.py')!r}, run_name='__main__')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    shard = out / "predictions.rank0-of-1.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "summary.json").exists(), "the run ended before it was killed"
    done_before = len(_shard_lines(out))
    assert 4 <= done_before < 18
    with open(shard, "a") as f:  # a write torn by the kill
        f.write('{"file_name": "' + str(setup["root"] / "images" / "img_017.png"))

    assert setup["tool"].main(argv) == 0
    lines = _shard_lines(out)
    assert sorted(r["file_name"] for r in lines) == sorted(
        r["file_name"] for r in setup["reference"]
    )
    assert read_records(str(out)) == setup["reference"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done_before"] == done_before and summary["torn_lines"] == 1
    assert summary["predicted"] == 18 - done_before and summary["failed"] == 0
    # A third run has nothing left to do.
    assert setup["tool"].main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["done_before"] == 18
    assert len(_shard_lines(out)) == 18


@pytest.mark.slow
def test_two_process_launch_splits_and_merges_to_the_single_process_records(setup, tmp_path):
    out = tmp_path / "out"
    argv = setup["argv"]([setup["root"] / "images"], out, "--num-workers", "0")
    argv += ["--num-gpus", "2", "--dist-url", f"file://{tmp_path / 'rendezvous'}"]
    assert setup["tool"].main(argv) == 0
    shards = sorted(p.name for p in out.glob("predictions.rank*.jsonl"))
    assert shards == ["predictions.rank0-of-2.jsonl", "predictions.rank1-of-2.jsonl"]
    per_rank = [read_jsonl(str(out / s))[0] for s in shards]
    assert [len(r) for r in per_rank] == [10, 8]  # chunks of 4: 0, 2, 4 and 1, 3
    assert read_records(str(out)) == setup["reference"]


def _field_case_folder(folder: Path) -> dict:
    """Every kind of file of F12-F14, a non-image, a hidden file, a broken JPEG, a sub-folder.
    Returns name -> expected outcome."""
    folder.mkdir()
    a = np.full((96, 72, 3), 20, np.uint8)
    a[20:80, 12:60] = (200, 120, 90)
    expected = {}
    for name, fmt in [("a.jpg", "JPEG"), ("b.png", "PNG"), ("c.jfif", "JPEG"), ("d.jpe", "JPEG"),
                      ("e.gif", "GIF"), ("f.JPG", "JPEG"), ("g.avif", "AVIF")]:  # fmt: skip
        try:
            Image.fromarray(a).save(folder / name, fmt)
            expected[name] = "predicted"
        except (KeyError, OSError, ValueError):  # a Pillow without AVIF: the name alone
            (folder / name).write_bytes(b"\x00\x00\x00\x1cftypavif" + bytes(64))
            expected[name] = "not a readable image"
    Image.fromarray(np.full((3, 1200, 3), 200, np.uint8)).save(folder / "strip.png")
    expected["strip.png"] = "degenerate size"
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    expected["broken.jpg"] = "cannot be decoded"
    (folder / "notes.txt").write_text("not an image")
    expected["notes.txt"] = "not a readable image"
    (folder / ".DS_Store").write_bytes(b"\x00" * 16)
    expected[".DS_Store"] = "hidden file"
    (folder / "sub").mkdir()
    expected["sub"] = "a folder"
    return expected


def test_every_file_is_predicted_or_listed_with_its_reason(setup, tmp_path):
    expected = _field_case_folder(tmp_path / "shop")
    out = tmp_path / "out"
    argv = setup["argv"]([tmp_path / "shop"], out, "--num-workers", "2", "--format", "coco")
    assert setup["tool"].main(argv) == 0
    got = {Path(r["file_name"]).name: "predicted" for r in read_records(str(out))}
    failed = json.loads((out / "failed.json").read_text())
    for entry in failed["failed"] + failed["left_out"]:
        assert Path(entry["file_name"]).name not in got
        got[Path(entry["file_name"]).name] = reason_kind(entry["reason"])
    assert got == expected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["predicted"] == sum(v == "predicted" for v in expected.values())
    assert summary["failed"] + summary["predicted"] == summary["files"] == len(expected) - 2
    assert summary["left_out_by_reason"] == {"hidden file": 1, "a folder": 1}
    coco = json.loads((out / "coco_results.json").read_text())
    assert coco and len(coco[0]["keypoints"]) == 3 * 108


def _state(folder: Path) -> dict:
    return {
        p.relative_to(folder): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_in_the_input_folder_never_touches_an_input(setup, tmp_path, where):
    photos = tmp_path / "photos"
    _images(photos, 3)
    (photos / "summer").mkdir()
    _images(photos / "summer", 2)
    before = _state(photos)
    out = photos if where == "same" else photos / "summer" / "predicted"
    argv = setup["argv"]([photos], out, "--recursive", "--draw", "--format", "coco", "deepfashion2")
    for run in range(2):
        assert setup["tool"].main(argv) == 0
        assert {k: v for k, v in _state(photos).items() if k in before} == before
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["predicted"], summary["done_before"]) == ((5, 0) if run == 0 else (0, 5))
        assert summary["failed"] == 0
    assert len(list((out / "drawings").glob("*.jpg"))) == 5
    names = {Path(r["file_name"]).name for r in read_records(str(out))}
    assert len(read_records(str(out))) == 5 and all(n.startswith("img_") for n in names)


def test_a_foreign_file_with_an_output_name_is_never_overwritten(setup, tmp_path, capsys):
    photos = tmp_path / "photos"
    _images(photos, 1)
    (photos / "summary.json").write_text("{}")  # the user's own file
    argv = setup["argv"]([photos], photos)
    assert setup["tool"].main(argv) == 2
    assert "summary.json" in capsys.readouterr().err
    assert (photos / "summary.json").read_text() == "{}"


def test_torn_lines_and_chunks():
    assert rank_chunks(10, 4, 0, 2) == [[0, 1, 2, 3], [8, 9]]
    assert rank_chunks(10, 4, 1, 2) == [[4, 5, 6, 7]]
    assert reason_kind("degenerate size: 1200x3 px resized") == "degenerate size"


def test_shard_writer_cuts_a_torn_line(tmp_path):
    path = tmp_path / "predictions.rank0-of-1.jsonl"
    path.write_text('{"file_name": "a.jpg"}\n{"file_name": "b.j')
    assert [r["file_name"] for r in read_jsonl(str(path))[0]] == ["a.jpg"]
    with ShardWriter(str(path)) as w:
        assert w.torn == 1
        w.write([{"file_name": "c.jpg"}])
    assert path.read_text() == '{"file_name": "a.jpg"}\n{"file_name": "c.jpg"}\n'


def test_demo_on_the_field_case_folder(setup, tmp_path, capsys):
    expected = _field_case_folder(tmp_path / "shop")
    demo = _load("kgdet_demo", REPO_ROOT / "demo.py")
    argv = ["--config-file", CONFIG, "--input", str(tmp_path / "shop"), "--output",
            str(tmp_path / "out"), "--confidence-threshold", "0.0", *TINY,
            "MODEL.WEIGHTS", str(setup["ckpt"])]  # fmt: skip
    assert demo.main(argv) == 0
    report = json.loads((tmp_path / "out" / "predictions.json").read_text())
    got = {Path(r["file_name"]).name: "predicted" for r in report["images"]}
    got.update({Path(s["file_name"]).name: "skipped" for s in report["skipped"]})
    got.update({Path(s["file_name"]).name: s["reason"] for s in report["left_out"]})
    assert got == {
        **{n: "predicted" for n, v in expected.items() if v == "predicted"},
        "strip.png": "skipped",
        "broken.jpg": "skipped",
        "notes.txt": "not an image file extension",
        ".DS_Store": "hidden file",
        "sub": "a folder (--recursive lists it)",
    }
    # --output equal to the input folder: refused in one line, nothing written.
    before = _state(tmp_path / "shop")
    argv[argv.index("--output") + 1] = str(tmp_path / "shop")
    capsys.readouterr()
    assert demo.main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _state(tmp_path / "shop") == before
