#!/usr/bin/env python
"""Plot box / keypoint AP against training iterations from a run's ``metrics.json``.

    python tools/plot_learning_curve.py output/kgdet_synth/metrics.json --output curve.png

Evaluations are logged when ``TEST.EVAL_PERIOD`` > 0 (and once after the last iteration).
"""

import argparse
import sys

from kgdet import cli  # first: importing kgdet hides known third-party import warnings

# isort: split

from kgdet.evaluation.learning_curve import DEFAULT_KEYS, plot_learning_curve, read_metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", help="a metrics.json written by train_net.py")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument(
        "--keys",
        nargs="+",
        default=list(DEFAULT_KEYS),
        help="metrics to plot (default: %(default)s)",
    )
    parser.add_argument("--title", default="", help="title of the plot")
    cli.add_debug_argument(parser)
    args = parser.parse_args(argv)
    return cli.run_main(lambda: _main(args), "plot_learning_curve.py", argv)


def _main(args: argparse.Namespace) -> int:
    try:
        curves = read_metrics(args.metrics, args.keys)
    except (OSError, ValueError) as e:
        raise cli.UsageError(str(e)) from e
    plot_learning_curve(curves, args.output, args.title)
    for key, points in curves.items():
        print(key, " ".join(f"{it}:{value:.1f}" for it, value in points))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
