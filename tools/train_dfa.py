#!/usr/bin/env python
"""Train DFA stage by stage, then report NE/PDL per stage (FLDEvaluator, GT boxes).

One command runs stages 1, 2, 3 in order, storing each stage's checkpoint and k-means centres in
OUTPUT_DIR/stage{k}/ (see dfa/training.py). Re-running resumes: finished stages are skipped and
an interrupted stage restarts from its last periodic checkpoint. Example (CPU, ~3 minutes on
2 busy cores):

    python tools/train_dfa.py --config-file configs/dfa_synth.yaml --num-threads 1

Evaluate a trained cascade only:

    python tools/train_dfa.py --config-file configs/dfa_synth.yaml --eval-only \
        MODEL.WEIGHTS output/dfa_synth/model_final.pth
"""

import logging
import os
import sys
import time

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

import torch

from detectron2.engine import default_argument_parser, default_setup
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from dfa import add_dfa_config, train_all_stages
from dfa.evaluation import evaluate_dfa, format_stage_table
from dfa.training import StaleStageError, final_checkpoint_path, last_consistent_stage
from kgdet import build_config  # importing kgdet registers the FLD-format datasets
from kgdet.checkpoint import KGDetCheckpointer
from kgdet.file_io import atomic_output

logger = logging.getLogger("dfa.train_dfa")


def setup(args):
    # "--stages 2 3 -- KEY VALUE": argparse keeps the "--" that ends the stage list
    opts = args.opts[1:] if args.opts[:1] == ["--"] else args.opts
    cfg = build_config(args.config_file, opts, add_dfa_config)
    cfg.freeze()
    cli.check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    cli.check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    cli.check_weights(cfg, required=False)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, name="dfa", abbrev_name="dfa")
    return cfg


def trained_cascade(cfg):
    """The model with the most stages trained so far (or cfg.MODEL.WEIGHTS if given)."""
    model = build_model(cfg)
    path = cfg.MODEL.WEIGHTS
    if not path:
        trained = [
            s
            for s in range(1, cfg.MODEL.DFA.NUM_STAGES + 1)
            if os.path.isfile(final_checkpoint_path(cfg.OUTPUT_DIR, s))
        ]
        if not trained:
            raise FileNotFoundError(
                f"no trained DFA stage in {cfg.OUTPUT_DIR} (stage*/model_final.pth); train first"
            )
        last, stale = last_consistent_stage(cfg.OUTPUT_DIR, max(trained))
        if stale is not None:
            if last == 0:
                raise stale
            logger.warning(f"Evaluating stages 1..{last} only: {stale}")
        path = final_checkpoint_path(cfg.OUTPUT_DIR, last)
    KGDetCheckpointer(model).load(path)
    flags = model.stage_trained.tolist()
    model.test_stages = next((i for i, ok in enumerate(flags) if not ok), len(flags))
    model.test_stages = min(model.test_stages, model.num_stages)
    if model.test_stages == 0:
        raise RuntimeError(f"{path} holds no trained DFA stage")
    logger.info(f"Evaluating {path}: stages 1..{model.test_stages}")
    return model


def main(args):
    cfg = setup(args)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    start = time.perf_counter()
    if not args.eval_only:
        train_all_stages(cfg, stages=args.stages, resume=not args.restart)
    train_time = time.perf_counter() - start
    model = trained_cascade(cfg)
    model.eval()
    tables = []
    for dataset_name in cfg.DATASETS.TEST:
        out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        results = evaluate_dfa(cfg, model, dataset_name, output_dir=out_dir)
        tables.append(format_stage_table(results, dataset_name))
    total = time.perf_counter() - start
    timing = (
        f"evaluation only, {total / 60:.1f} min"
        if args.eval_only
        else f"training {train_time / 60:.1f} min, total {total / 60:.1f} min"
    )
    report = "\n\n".join(tables) + f"\n\nwall time: {timing}\n"
    print(report)
    with atomic_output(os.path.join(cfg.OUTPUT_DIR, "dfa_results.md")) as f:
        f.write(report)
    return 0


def build_parser():
    parser = default_argument_parser(
        epilog="Stages are trained in order; finished stages are skipped (resumable)."
    )
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        default=None,
        help="stages to train (default: all); before config overrides write --stages=1 or "
        "--stages 2 3 --, as the list would take the overrides",
    )
    parser.add_argument(
        "--num-threads",
        type=int,
        default=0,
        help="torch CPU threads (0: torch's default); 1 is fastest on a busy shared machine",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="retrain the requested stages from scratch (recompute centres, ignore checkpoints)",
    )
    cli.add_debug_argument(parser)
    return parser


def invoke_main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cli.pop_debug_flag(args.opts)
    try:
        return cli.run_main(lambda: main(args), "train_dfa.py", argv)
    except StaleStageError as error:  # files of different runs: say which, without a traceback
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(invoke_main())
