"""One rank of a prediction run: its share of the files, resumed, batched, written as it goes.

The sorted input list is cut into fixed chunks of ``batch_size`` files; rank ``r`` of ``w``
takes chunks ``r, r + w, r + 2w, ...`` and appends its records to its own shards
(``predictions.rank{r}-of-{w}.jsonl``, ``failed.rank{r}-of-{w}.jsonl``). A chunk whose files all
have a record in any shard of the output folder is skipped; a chunk only partly recorded (the
batch in flight when a run was killed) is run again as a whole and only its missing files are
written. The chunks — hence the batches — are the same for any number of processes and any
interruption, so a resumed or distributed run writes exactly the records of one uninterrupted
single-process run. Rank 0 then merges the shards into ``failed.json``, ``summary.json`` and
the requested extra formats.
"""

import logging
import numpy as np
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence
import cv2
import torch
import torch.utils.data as torchdata
import tqdm

from detectron2.data import MetadataCatalog
from detectron2.data.build import trivial_batch_collator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..file_io import write_atomic, write_json_atomic
from .decoding import PredictionImageDataset, split_batch
from .formats import write_formats
from .inputs import InputListing
from .output_folder import DRAWINGS_DIR, FAILED_FILE, SUMMARY_FILE
from .predictors import EagerBatchPredictor, ExportedBatchPredictor
from .records import (
    FAILED_SHARD,
    PREDICTION_SHARD,
    ShardWriter,
    file_key,
    instances_to_records,
    read_done_files,
    read_records,
    shard_name,
)

__all__ = ["PredictionOptions", "PredictionSummary", "predict_files", "run_prediction"]

logger = logging.getLogger(__name__)


@dataclass
class PredictionOptions:
    """What ``tools/predict.py`` asks of a run (see its ``--help``)."""

    output_dir: str
    batch_size: int = 4
    num_workers: int = 2
    exported: Optional[str] = None
    num_threads: Optional[int] = None
    draw: bool = False
    keypoint_threshold: float = 0.5
    progress: bool = False
    formats: Sequence[str] = ("jsonl",)


@dataclass
class PredictionSummary:
    """Counts of one run (summed over ranks): ``predicted`` and ``failed`` in this run,
    ``done_before`` skipped because an earlier run recorded them, ``left_out`` by the listing
    (hidden files, folders, ...), ``torn_lines`` cut off or skipped in existing shards."""

    files: int = 0
    predicted: int = 0
    done_before: int = 0
    failed: int = 0
    left_out: int = 0
    torn_lines: int = 0
    failed_by_reason: Dict[str, int] = field(default_factory=dict)
    left_out_by_reason: Dict[str, int] = field(default_factory=dict)

    def __add__(self, other: "PredictionSummary") -> "PredictionSummary":
        out = PredictionSummary()
        for name in ("files", "predicted", "done_before", "failed", "left_out", "torn_lines"):
            setattr(out, name, getattr(self, name) + getattr(other, name))
        for name in ("failed_by_reason", "left_out_by_reason"):
            merged = dict(getattr(self, name))
            for k, v in getattr(other, name).items():
                merged[k] = merged.get(k, 0) + v
            setattr(out, name, merged)
        return out

    def line(self) -> str:
        """``N input files: a predicted, b skipped as already done, c failed (...); d other
        entries left out (...)``."""

        def detail(counts: Dict[str, int]) -> str:
            return " (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"

        text = (
            f"{self.files} input files: {self.predicted} predicted, {self.done_before} skipped as "
            f"already done, {self.failed} failed"
            + (detail(self.failed_by_reason) if self.failed else "")
            + f"; {self.left_out} other entries left out"
            + (detail(self.left_out_by_reason) if self.left_out else "")
        )
        if self.torn_lines:
            text += f", {self.torn_lines} torn line(s) of an interrupted run cut off"
        return text


def reason_kind(reason: str) -> str:
    """The kind of a failure reason, for counts: its text before the first ":" or " ("."""
    return reason.split(":")[0].split(" (")[0].strip()


def _count(counts: Dict[str, int], reason: str) -> None:
    kind = reason_kind(reason)
    counts[kind] = counts.get(kind, 0) + 1


def rank_chunks(num_files: int, batch_size: int, rank: int, world_size: int) -> List[List[int]]:
    """File indices of the chunks of ``rank``: fixed chunks of ``batch_size`` consecutive
    indices of the sorted list, dealt round-robin (chunk ``c`` goes to rank ``c % world``)."""
    chunks = [
        list(range(i, min(i + batch_size, num_files))) for i in range(0, num_files, batch_size)
    ]
    return chunks[rank::world_size]


def _drawing_name(index: int, path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(DRAWINGS_DIR, f"{index:06d}_{stem}.jpg")


def _draw(item: Dict, instances, metadata, keypoint_threshold: float, path: str) -> None:
    from ..evaluation.garment_visualizer import GarmentVisualizer

    vis = GarmentVisualizer(item["original"][:, :, ::-1], metadata)
    drawn = vis.draw_instance_predictions_garments(instances, keypoint_threshold).get_image()
    bgr = np.ascontiguousarray(drawn[:, :, ::-1])

    def write(tmp: str) -> None:
        if not cv2.imwrite(tmp, bgr):
            raise OSError(f"cv2.imwrite could not write '{path}'")

    write_atomic(path, write)


def predict_files(
    cfg,
    files: Sequence[str],
    options: PredictionOptions,
    rank: int = 0,
    world_size: int = 1,
) -> PredictionSummary:
    """Predict this rank's share of ``files`` (sorted, the same list in every rank) into
    ``options.output_dir``; see the module docstring.

    Returns:
        this rank's :class:`PredictionSummary` (``left_out`` not included).
    """
    dataset_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else cfg.DATASETS.TRAIN[0]
    metadata = MetadataCatalog.get(dataset_name)
    done, bad_lines = read_done_files(options.output_dir)
    comm.synchronize()  # every rank has read the earlier records before any rank appends
    chunks = rank_chunks(len(files), options.batch_size, rank, world_size)
    summary = PredictionSummary(files=sum(len(c) for c in chunks))
    todo = [c for c in chunks if any(file_key(files[i]) not in done for i in c)]
    summary.done_before = sum(1 for c in chunks for i in c if file_key(files[i]) in done)
    if not todo:
        summary.torn_lines = bad_lines if rank == 0 else 0
        return summary

    dataset = PredictionImageDataset(
        files,
        cfg.INPUT.FORMAT,
        cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST,
        keep_original=options.draw,
    )
    loader = torchdata.DataLoader(
        dataset,
        batch_sampler=todo,
        num_workers=options.num_workers,
        collate_fn=trivial_batch_collator,
    )
    if options.exported:
        predictor = ExportedBatchPredictor(cfg, options.exported, options.num_threads)
    else:
        predictor = EagerBatchPredictor(cfg)
    out = options.output_dir
    bar = tqdm.tqdm(
        total=sum(len(c) for c in todo)
        - sum(1 for c in todo for i in c if file_key(files[i]) in done),
        desc=f"predict (rank {rank} of {world_size})" if world_size > 1 else "predict",
        unit="img",
        disable=not (options.progress and comm.is_main_process()),
        dynamic_ncols=True,
    )
    with ShardWriter(
        os.path.join(out, shard_name(PREDICTION_SHARD, rank, world_size))
    ) as pw, ShardWriter(os.path.join(out, shard_name(FAILED_SHARD, rank, world_size))) as fw:
        for batch in loader:
            items, failures = split_batch(batch)
            results, model_failures = predictor(items)
            failures += model_failures
            records = []
            for item, instances in sorted(results, key=lambda r: r[0]["index"]):
                if file_key(item["file_name"]) in done:
                    continue
                record = {
                    "file_name": item["file_name"],
                    "height": item["height"],
                    "width": item["width"],
                    "instances": instances_to_records(instances, metadata),
                }
                if options.draw:
                    name = _drawing_name(item["index"], item["file_name"])
                    _draw(
                        item,
                        instances,
                        metadata,
                        options.keypoint_threshold,
                        os.path.join(out, name),
                    )
                    record["drawing"] = name
                records.append(record)
            new_failures = [
                f
                for f in sorted(failures, key=lambda f: f.index)
                if file_key(f.file_name) not in done
            ]
            for f in new_failures:
                logger.warning(f"Skipping '{f.file_name}': {f.reason}")
                _count(summary.failed_by_reason, f.reason)
            pw.write(records)
            fw.write(f.to_record() for f in new_failures)
            summary.predicted += len(records)
            summary.failed += len(new_failures)
            bar.update(len(records) + len(new_failures))
    bar.close()
    summary.torn_lines = bad_lines if rank == 0 else 0  # every rank read the same shards
    return summary


def _threads_per_process(device: str) -> Optional[int]:
    """CPU threads for each of several processes on one machine (None: leave the default)."""
    local = comm.get_local_size()
    if not device.startswith("cpu") or local <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    return max(1, (os.cpu_count() or 1) // local)


def run_prediction(cfg, listing: InputListing, options: PredictionOptions) -> PredictionSummary:
    """The work of every process of ``tools/predict.py`` (called by Detectron2's ``launch``):
    predict this rank's share, then on rank 0 merge and write ``failed.json``,
    ``summary.json`` and the extra formats. Returns the summed summary (on every rank)."""
    if comm.get_world_size() > 1 and comm.get_rank() > 0:  # spawned: a logger of its own
        setup_logger(name="kgdet", distributed_rank=comm.get_rank())
    elif comm.get_world_size() > 1:
        setup_logger(name="kgdet")
    threads = options.num_threads or _threads_per_process(cfg.MODEL.DEVICE)
    if threads:
        torch.set_num_threads(threads)
        options.num_threads = threads
    rank, world_size = comm.get_rank(), comm.get_world_size()
    summary = predict_files(cfg, listing.files, options, rank, world_size)
    total = PredictionSummary()
    for s in comm.all_gather(summary):
        total = total + s
    total.left_out = len(listing.skipped)
    for s in listing.skipped:
        _count(total.left_out_by_reason, s["reason"])
    if comm.is_main_process():
        _finish(cfg, listing, options, total)
        logger.info(f"Summary: {total.line()}; records in {options.output_dir}")
    comm.synchronize()
    return total


def _finish(cfg, listing: InputListing, options: PredictionOptions, total: PredictionSummary):
    out = options.output_dir
    failed = read_records(out, FAILED_SHARD)
    write_json_atomic(
        os.path.join(out, FAILED_FILE),
        {"failed": failed, "left_out": listing.skipped},
        indent=1,
    )
    write_json_atomic(os.path.join(out, SUMMARY_FILE), asdict(total), indent=1)
    if any(f != "jsonl" for f in options.formats):
        dataset_name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else cfg.DATASETS.TRAIN[0]
        records = read_records(out, PREDICTION_SHARD)
        for name, path in write_formats(
            records, MetadataCatalog.get(dataset_name), out, options.formats
        ).items():
            logger.info(f"Wrote {name}: {path}")
