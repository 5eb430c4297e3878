#!/usr/bin/env python
"""KGDet training and evaluation script (Detectron2 style).

Examples:
    python train_net.py --config-file configs/kgdet_synth.yaml
    python train_net.py --config-file configs/kgdet_R50.yaml --num-gpus 4
    python train_net.py --config-file configs/kgdet_R50.yaml --eval-only MODEL.WEIGHTS model.pth

Differences from Detectron2's tools/train_net.py: the data loaders use ``KGDetDatasetMapper``
(keypoints with visibility and class slots), the evaluator is chosen from the dataset's
metadata by ``kgdet.evaluation.build_kgdet_evaluator``, and the optimizer clips the gradient
norm of the whole model jointly (``kgdet.solver``, docs/DESIGN.md §9).

Ordinary mistakes (missing config or weights file, unknown config key, unregistered dataset) end
in one line and exit status 2; ``--debug`` (or ``KGDET_DEBUG=1``) shows the traceback.
"""

import logging
import os
import sys
from collections import OrderedDict

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import detectron2.engine.defaults as d2_defaults
import detectron2.utils.comm as comm
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from kgdet import get_kgdet_cfg  # importing kgdet registers the model, backbone and datasets
from kgdet.checkpoint import KGDetCheckpointer
from kgdet.data import KGDetDatasetMapper, build_kgdet_test_loader, build_kgdet_train_loader
from kgdet.evaluation import build_kgdet_evaluator, check_oks_sigmas_config
from kgdet.solver import build_optimizer
from kgdet.tta import KGDetWithTTA


def _create_ddp_model(model, **kwargs):
    """Detectron2's ``create_ddp_model``, also for CPU processes.

    ``DefaultTrainer`` passes ``device_ids=[local_rank]``, which DistributedDataParallel rejects
    for a CPU module; multi-process CPU runs (``--num-gpus N MODEL.DEVICE cpu``, gloo backend)
    need ``device_ids=None``.
    """
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


_d2_create_ddp_model = d2_defaults.create_ddp_model
_d2_checkpointer = d2_defaults.DetectionCheckpointer


class Trainer(DefaultTrainer):
    """DefaultTrainer with KGDet's mapper, evaluator and optimizer (and CPU-capable DDP); its
    checkpointer is a ``KGDetCheckpointer`` (an unreadable checkpoint is named in one line;
    ``--resume`` falls back to the newest readable checkpoint in OUTPUT_DIR)."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ wraps the model with the module-level create_ddp_model and
        # builds the module-level DetectionCheckpointer.
        d2_defaults.create_ddp_model = _create_ddp_model
        d2_defaults.DetectionCheckpointer = KGDetCheckpointer
        try:
            super().__init__(cfg)
        finally:
            d2_defaults.create_ddp_model = _d2_create_ddp_model
            d2_defaults.DetectionCheckpointer = _d2_checkpointer

    @classmethod
    def build_train_loader(cls, cfg):
        # DeepFashion2 annotations stay memory-mapped (shared by all ranks and workers).
        return build_kgdet_train_loader(cfg, mapper=KGDetDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        # Unreadable images are left out and counted, not replaced by another image.
        return build_kgdet_test_loader(
            cfg, dataset_name, mapper=KGDetDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_kgdet_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with image-level test-time augmentation (TEST.AUG: sizes and flip)."""
        logging.getLogger("kgdet").info("Running inference with test-time augmentation ...")
        model = KGDetWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})


def setup(args):
    """Config from file and command line, Detectron2's default setup, and the "kgdet" logger."""
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    cfg.freeze()
    check_oks_sigmas_config(cfg)  # a wrong TEST.KEYPOINT_OKS_SIGMAS fails now, not after training
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="kgdet")
    return cfg


def main(args):
    cfg = setup(args)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        KGDetCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(Trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        trainer.register_hooks(
            [hooks.EvalHook(0, lambda: trainer.test_with_TTA(cfg, trainer.model))]
        )
    return trainer.train()


def get_parser():
    """Detectron2's ``default_argument_parser`` plus ``--debug``."""
    return cli.add_debug_argument(default_argument_parser())


def check_args(args) -> None:
    """Catch the ordinary mistakes before any process starts (raises ``UsageError``)."""
    cfg = get_kgdet_cfg(args.config_file, args.opts)
    cli.check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    cli.check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    cli.check_weights(
        cfg,
        required=args.eval_only and not args.resume,
        hint="--eval-only evaluates a trained model, e.g. output/kgdet_synth/model_final.pth",
    )


def invoke_main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    args.debug = cli.pop_debug_flag(args.opts) or args.debug
    return cli.run_main(lambda: _launch(args), "train_net.py", argv)


def _launch(args) -> None:
    check_args(args)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    sys.exit(invoke_main())  # pragma: no cover
