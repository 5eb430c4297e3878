"""``python -m kgdet.benchmark --worker NAME ...``: one benchmark worker (see ``worker``)."""

from .worker import run_worker, worker_parser

if __name__ == "__main__":
    run_worker(worker_parser().parse_args())
