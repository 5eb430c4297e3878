"""tools/check_dataset.py: clean data passes, truncated and EXIF-rotated images fail by name."""

import json
import numpy as np
from pathlib import Path

from builders import load_script
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_dataset.py"


def _tool():
    return load_script(SCRIPT, "check_dataset")


def _images(folder, kinds):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, kind in kinds.items():
        kw = {}
        if kind == "rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            kw["exif"] = exif
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
            folder / name, "JPEG", quality=95, **kw
        )
        if kind == "truncated":
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) // 2])


def test_image_folder_with_truncated_and_rotated_images_fails(tmp_path, capsys):
    _images(tmp_path / "imgs", {"a.jpg": "good", "b.jpg": "truncated", "c.jpg": "rotated"})
    report = tmp_path / "r.txt"
    assert _tool().main([str(tmp_path / "imgs"), "--report", str(report), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "ERROR unreadable_image" in out and "b.jpg" in out
    assert "ERROR exif_orientation" in out and "c.jpg" in out and "a.jpg" not in out
    assert "1 of 3 images decode cleanly" in report.read_text()


def test_json_dataset_checks_annotations_and_sizes(tmp_path, capsys):
    _images(tmp_path / "image", {"000001.jpg": "good", "000002.jpg": "good"})
    kps = [0.0] * 882
    data = {
        "images": [
            dict(id=1, file_name="000001.jpg", width=64, height=48),
            dict(id=2, file_name="000002.jpg", width=50, height=48),
        ],
        "annotations": [dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 10, 10], keypoints=kps)],
        "categories": [{"id": 1, "name": "short sleeve top"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    tool = _tool()
    assert tool.main([str(tmp_path), "--report", str(tmp_path / "r.txt"), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "'area' missing in 1 of 1" in out  # filled: a warning, not an error
    assert "ERROR image_size" in out and "json says 50x48, the image decodes to 64x48" in out
    data["images"][1]["width"] = 64
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    assert tool.main([str(tmp_path), "--report", str(tmp_path / "r.txt"), "--no-progress"]) == 0
    data["annotations"][0]["keypoints"] = [0.0] * 3
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    assert (
        tool.main(
            [
                "--json",
                str(tmp_path / "annotations.json"),
                "--image-root",
                str(tmp_path / "image"),
                "--report",
                str(tmp_path / "r.txt"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "expected 3 x 294" in capsys.readouterr().out


def test_demo_images_are_clean(df2_demo_dir, tmp_path, capsys):
    assert (
        _tool().main([str(df2_demo_dir), "--report", str(tmp_path / "r.txt"), "--no-progress"]) == 0
    )
    assert "clean: 32 images, 55 annotations" in capsys.readouterr().out


def test_image_folder_checks_every_readable_format_and_names_the_rest(tmp_path, capsys):
    folder = tmp_path / "shop"
    _images(folder, {"a.jpg": "good", "b.jfif": "good", "c.jpe": "good", "d.JPG": "good"})
    Image.new("P", (40, 30)).save(folder / "e.gif")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0\1")
    (folder / "sub").mkdir()
    report = tmp_path / "r.txt"
    assert _tool().main([str(folder), "--report", str(report), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "5 of 5 images decode cleanly" in last
    assert "3 folder entries left out" in last
    for name in ("notes.txt (not an image file extension)", ".DS_Store (hidden file)", "sub (a"):
        assert name in last
    assert "3 folder entries left out" in report.read_text()
