"""kgdet.cli and the config builder: ordinary mistakes give one line and exit status 2."""

import ast
import os
import subprocess
import sys
import warnings
from pathlib import Path
import pytest

from kgdet import ConfigError, cli, get_kgdet_cfg

REPO = Path(__file__).resolve().parents[2]
SYNTH = str(REPO / "configs" / "kgdet_synth.yaml")


def test_unknown_key_names_the_nearest_existing_one(tmp_path):
    with pytest.raises(ConfigError, match=r"SOLVER\.MAX_ITERS on the command line; did you mean "
                                          r"SOLVER\.MAX_ITER\?"):  # fmt: skip
        get_kgdet_cfg(SYNTH, ["SOLVER.MAX_ITERS", "5"])
    with pytest.raises(ConfigError, match=r"did you mean MODEL\.KGDET\.NUM_CLASSES\?"):
        get_kgdet_cfg(SYNTH, ["KGDET.NUM_CLASSES", "5"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{REPO / "configs" / "Base-KGDet.yaml"}"\nMODEL:\n  KGDET:\n'
                   "    NUM_CLASSSES: 3\n")  # fmt: skip
    with pytest.raises(ConfigError, match=rf"MODEL\.KGDET\.NUM_CLASSSES in config file '{bad}'"):
        get_kgdet_cfg(str(bad))


def test_missing_files_bad_values_and_odd_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="config file 'configs/kgdet_synth.yml' not found.*did "
                                          "you mean configs/kgdet_synth.yaml"):  # fmt: skip
        get_kgdet_cfg("configs/kgdet_synth.yml")
    with pytest.raises(ConfigError, match="does_not_exist.yaml' not found: expected a yaml"):
        get_kgdet_cfg(str(tmp_path / "does_not_exist.yaml"))
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "missing_base.yaml"\n')
    with pytest.raises(ConfigError, match="missing_base.yaml.*the _BASE_ of"):
        get_kgdet_cfg(str(child))
    with pytest.raises(ConfigError, match="bad config value.*SOLVER.MAX_ITER"):
        get_kgdet_cfg(SYNTH, ["SOLVER.MAX_ITER", "abc"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        get_kgdet_cfg(SYNTH, ["SOLVER.MAX_ITER"])


def test_weights_and_dataset_checks(tmp_path):
    cfg = get_kgdet_cfg(SYNTH)
    cli.check_weights(cfg)  # empty and not required: fine
    with pytest.raises(cli.UsageError, match="MODEL.WEIGHTS is empty.*train first"):
        cli.check_weights(cfg, required=True, hint="train first")
    cfg.MODEL.WEIGHTS = str(tmp_path / "model.pth")
    with pytest.raises(cli.UsageError, match="model.pth' not found: expected a checkpoint"):
        cli.check_weights(cfg)
    (tmp_path / "model.pth").write_bytes(b"")
    cli.check_weights(cfg, required=True)
    cfg.MODEL.WEIGHTS = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    cli.check_weights(cfg)  # fetched by Detectron2, not checked here
    with pytest.raises(cli.UsageError, match="'kgdet_synth_trian' is not registered; did you "
                                             "mean 'kgdet_synth_train'"):  # fmt: skip
        cli.check_datasets(["kgdet_synth_trian"], "DATASETS.TRAIN")
    with pytest.raises(cli.UsageError, match="--input 'nothing_here.png' not found"):
        cli.check_input_paths([str(tmp_path), "nothing_here.png"], "--input")


def test_run_main_prints_one_line_and_returns_2(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def bad():
        raise cli.UsageError("thing 'x' not found:\nexpected y")

    assert cli.run_main(bad, "tool.py", argv=[]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool.py: error: thing 'x' not found: expected")
    with pytest.raises(cli.UsageError):
        cli.run_main(bad, "tool.py", argv=["--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(cli.UsageError):
        cli.run_main(bad, "tool.py", argv=[])
    assert cli.run_main(lambda: None, "tool.py", argv=[]) == 0

    def bug():
        raise RuntimeError("a real bug keeps its traceback")

    with pytest.raises(RuntimeError):
        cli.run_main(bug, "tool.py", argv=[])


def test_only_the_listed_third_party_warnings_are_filtered():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning)
        warnings.warn("ours", UserWarning)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        cli.filter_third_party_warnings(replay=caught)
        warnings.warn("`torch.jit.script` is deprecated. later", FutureWarning)
    assert [str(w.message) for w in shown] == ["ours"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config-file", "configs/does_not_exist.yaml"], "does_not_exist.yaml' not found"),
        (["--config-file", "configs/kgdet_synth.yaml", "SOLVER.MAX_ITERS", "5"],
         "did you mean SOLVER.MAX_ITER?"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_train_net_errors_are_one_line_with_status_2(args, expected):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "projects" / "KGDet"), str(REPO / "projects" / "DFA"),
         os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "train_net.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no warning, no traceback
    assert lines[0].startswith("train_net.py: error: ") and expected in lines[0]


def _entry_points():
    scripts = ["train_net.py", "demo.py", *sorted(p.relative_to(REPO).as_posix() for p in [
        *(REPO / "tools").glob("*.py"), *(REPO / "tools" / "deploy").glob("*.py"),
        *(REPO / "datasets").glob("prepare_*.py")])]  # fmt: skip
    return scripts


@pytest.mark.parametrize("script", _entry_points())
def test_every_entry_point_imports_kgdet_before_detectron2(script):
    """The torch.jit.script deprecation (fvcore at import) is hidden by every command-line tool:
    each one imports ``kgdet`` (which records the warnings of its own imports and issues again all
    but :data:`kgdet.cli.THIRD_PARTY_WARNINGS`) before any Detectron2, DFA, torch or fvcore
    import."""
    tree = ast.parse((REPO / script).read_text())
    imports_before_kgdet = []
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [
            a.name for a in node.names]  # fmt: skip
        if any(n.split(".")[0] == "kgdet" for n in names):
            break
        imports_before_kgdet += [n for n in names if n.split(".")[0] in (
            "detectron2", "dfa", "torch", "fvcore")]  # fmt: skip
    else:
        pytest.fail(f"{script} never imports kgdet at module level")
    assert not imports_before_kgdet, f"{script} imports {imports_before_kgdet} before kgdet"


@pytest.mark.slow
def test_importing_kgdet_shows_no_third_party_import_warning():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO / "projects" / "KGDet"), str(REPO / "projects" / "DFA"),
         os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import kgdet, dfa"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "torch.jit.script" not in proc.stderr, proc.stderr
