#!/usr/bin/env python
"""Time and peak memory of loading a DeepFashion2 json for training, up to the first batch.

Steps, in one process: the training loader's dataset (``DatasetCatalog.get`` of the json
registered as a DeepFashion2 set: the first parse or the memory-mapped cache; filters, class
histogram: ``get_kgdet_dataset_dicts``), then the loader and its first batch (what
``build_kgdet_train_loader`` does, + ``next``). After each step: the peak RSS so far, and the
resident memory split into private pages and file-backed pages (the memory-mapped cache,
shared by every process that maps it). Each step
prints its wall time and the process's peak resident set size so far. ``--previous`` loads the
json the way the project did before the compact columns (``json.load`` + checks + Python
dataset dicts, Detectron2's ``build_detection_train_loader``), for a side-by-side run.

    python tools/benchmark_annotation_loading.py --json J --image-root R \
        [--config-file configs/kgdet_R50.yaml] [--cache-dir D] [--no-cache] [--previous]
    python tools/benchmark_annotation_loading.py --json J --image-root R --prepare-images

``--prepare-images`` fills ``--image-root`` with links to one gray JPEG per image size of the
json (for generated jsons without images) and exits. ``--shared-by N`` starts N processes that
load the json's cache and read every column, and prints, while all are alive, each one's
resident (Rss) and proportional (Pss) share of the cache mapping and the private memory the
loading added: what N ranks of one launch cost.
"""

import argparse
import os
import resource
import sys
import time
from typing import Callable

import kgdet  # noqa: F401  (first: importing kgdet hides known third-party import warnings)

# isort: split

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data.build import get_detection_dataset_dicts

from kgdet import get_kgdet_cfg
from kgdet.data import KGDetDatasetMapper, get_kgdet_dataset_dicts, load_compact_annotations
from kgdet.data.compact_dicts import CompactDatasetDicts
from kgdet.data.deepfashion2_meta import get_deepfashion2_metadata
from kgdet.data.json_stream import iter_top_level
from kgdet.data.register import DEEPFASHION2_SCHEMA, coco_json_to_dataset_dicts
from kgdet.data.validation import check_coco_annotations, load_json_file

NAME = "benchmark_annotation_loading"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _resident_gib(kind: str) -> float:
    """RssAnon (private memory) or RssFile (file pages, shared between processes) now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _step(label: str, fn: Callable):
    start = time.perf_counter()
    out = fn()
    print(
        f"{label:<30} {time.perf_counter() - start:7.1f} s   peak RSS {_peak_gib():5.2f} GiB   "
        f"now: private {_resident_gib('RssAnon'):5.2f} GiB, "
        f"file-backed {_resident_gib('RssFile'):5.2f} GiB"
    )
    sys.stdout.flush()
    return out


def _prepare_images(json_file: str, image_root: str) -> None:
    import numpy as np
    import cv2

    os.makedirs(image_root, exist_ok=True)
    made = {}
    for key, index, image in iter_top_level(json_file):
        if key != "images" or index is None:
            continue
        size = (image["width"], image["height"])
        if size not in made:
            made[size] = os.path.join(image_root, f".placeholder_{size[0]}x{size[1]}.jpg")
            cv2.imwrite(made[size], np.full((size[1], size[0], 3), 128, dtype=np.uint8))
        link = os.path.join(image_root, image["file_name"])
        if not os.path.lexists(link):
            os.symlink(os.path.basename(made[size]), link)
    print(f"{image_root}: links to {len(made)} placeholder image(s)")


def _cache_mapping_mib():
    """(Rss, Pss) in MiB of this process's mappings of annotation cache files."""
    rss = pss = 0
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().endswith(".kgdet-annotations")
            elif inside and first == "Rss:":
                rss += int(line.split()[1])
            elif inside and first == "Pss:":
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def _shared_child(json_file, cache_dir, barrier, queue) -> None:
    import numpy as np

    before = _resident_gib("RssAnon")
    compact = load_compact_annotations(json_file, cache_dir=cache_dir)
    for column in compact.arrays.values():
        np.asarray(column).sum()  # touch every page
    barrier.wait()
    rss, pss = _cache_mapping_mib()
    queue.put((os.getpid(), rss, pss, (_resident_gib("RssAnon") - before) * 1024))
    barrier.wait()


def _shared_by(json_file: str, cache_dir, n: int) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_shared_child, args=(json_file, cache_dir, barrier, queue))
        for _ in range(n)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        pid, rss, pss, private = queue.get()
        print(
            f"process {pid}: cache mapping Rss {rss:.1f} MiB, Pss {pss:.1f} MiB; private "
            f"memory added by loading {private:.1f} MiB"
        )
    for p in procs:
        p.join()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--image-root", default="")
    parser.add_argument("--config-file", default="configs/kgdet_R50.yaml")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--previous", action="store_true", help="the loading before the columns")
    parser.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS")
    parser.add_argument("--prepare-images", action="store_true")
    parser.add_argument("--shared-by", type=int, default=0, metavar="N")
    args = parser.parse_args(argv)
    if args.prepare_images:
        _prepare_images(args.json, args.image_root)
        return
    if args.shared_by:
        _shared_by(args.json, args.cache_dir, args.shared_by)
        return

    if args.previous:

        def load():
            data = load_json_file(args.json)
            check_coco_annotations(data, args.json, DEEPFASHION2_SCHEMA).log()
            return coco_json_to_dataset_dicts(data, args.image_root, args.json)

    else:

        def load():
            compact = load_compact_annotations(
                args.json, cache_dir=args.cache_dir, use_cache=not args.no_cache
            )
            return CompactDatasetDicts(compact, args.image_root)

    DatasetCatalog.register(NAME, load)
    MetadataCatalog.get(NAME).set(json_file=args.json, **get_deepfashion2_metadata())
    cfg = get_kgdet_cfg(
        args.config_file,
        ["DATASETS.TRAIN", f"('{NAME}',)", "DATALOADER.NUM_WORKERS", str(args.workers)],
    )
    print(f"{args.json}: {os.path.getsize(args.json) / 2**30:.2f} GiB, "
          f"{'previous loading' if args.previous else 'compact columns'}")  # fmt: skip
    if args.previous:
        dataset = _step(
            "registration + dataset dicts", lambda: get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
        )
    else:
        dataset = _step(
            "registration + dataset dicts", lambda: get_kgdet_dataset_dicts(cfg.DATASETS.TRAIN)
        )
    print(f"  {len(dataset)} images ({type(dataset).__name__})")
    mapper = KGDetDatasetMapper(cfg, is_train=True)
    # build_kgdet_train_loader = this call on get_kgdet_dataset_dicts(cfg.DATASETS.TRAIN).
    loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
    batch = _step("train loader + first batch", lambda: next(iter(loader)))
    print(f"  batch of {len(batch)} images")


if __name__ == "__main__":
    main()
