"""README.md and projects/DFA/README.md run as written.

What is extracted (whatever the READMEs contain, so new sections are covered automatically):

- every fenced ``python`` block (a *snippet*);
- every shell *command*: a line of any other fenced block (``\\`` continuations joined, ``&&``
  chains split, ``# comments`` dropped, leading ``VAR=value`` assignments skipped) that starts
  with ``python``, ``pip`` or ``black``/``isort``, and every inline ```python ...``` code span
  (the tools table).

How they are checked, in a throw-away "clone" (a temporary folder whose entries link to the
repository's, so ``output/`` and the synthetic cache start empty):

1. The commands of :data:`RUN` are run, in README order, with the extra arguments given there
   (a few iterations instead of a full schedule) and :data:`ENV` (a small synthetic cache). This
   is how the first command's checkpoint, ``output/kgdet_synth/model_final.pth``, comes to exist.
   Each must be in a README, so renaming or dropping one fails here.
2. Every snippet then runs unchanged (``python snippet.py`` from the clone's root); every
   ``output/...`` image it names must exist afterwards.
3. Every other ``python SCRIPT ...`` command (long trainings, benchmarks, placeholders such as
   ``C`` or ``IN.pth``) is checked without running it: the script exists, each ``--flag`` it uses
   appears in ``python SCRIPT --help``, each ``configs/*.yaml`` exists and each ``KEY VALUE``
   override is an existing config key. ``pip`` commands: the files they install exist; ``python
   -m pytest``: the paths exist, and the README's suite command is the one ``.ci/run`` runs.

To exempt a slow command from running, leave it out of :data:`RUN`: it is then checked as in 3.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple
import pytest

from detectron2.config import get_cfg

from dfa import add_dfa_config
from kgdet import add_kgdet_config

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "projects/DFA/README.md")

# Commands run for real (exact text as in a README, whitespace-normalised) -> extra arguments.
FAST_KGDET = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0"]
FAST_DFA = FAST_KGDET + [
    "SOLVER.IMS_PER_BATCH", "8", "SOLVER.CHECKPOINT_PERIOD", "1",
    "MODEL.DFA.NUM_CLUSTERS", "3", "MODEL.DFA.KMEANS_N_INIT", "1",
]  # fmt: skip
RUN: Dict[str, List[str]] = {
    # README's first command (after the two pip installs): writes output/kgdet_synth/.
    "python train_net.py --config-file configs/kgdet_synth.yaml": FAST_KGDET,
    # README's demo line on that checkpoint.
    "python demo.py --config-file configs/kgdet_synth.yaml --dataset kgdet_synth_val --output "
    "output/kgdet_synth/demo MODEL.WEIGHTS output/kgdet_synth/model_final.pth": [
        "--num-images",
        "2",
    ],
    # README "Deploy": the export of that checkpoint, which the ExportedPredictor snippet reads.
    "python tools/deploy/export_model.py --config-file configs/kgdet_synth.yaml --format onnx "
    "--export-method tracing --output output/export MODEL.WEIGHTS "
    "output/kgdet_synth/model_final.pth": [],
    # DFA README: the synthetic cascade, and the KGDet detector of the pipeline snippet.
    "python tools/train_dfa.py --config-file configs/dfa_synth.yaml --num-threads 1": FAST_DFA,
    "python train_net.py --config-file configs/kgdet_synth.yaml DATASETS.TRAIN "
    "\"('dfa_synth_train',)\" DATASETS.TEST \"('dfa_synth_val',)\" MODEL.KGDET.NUM_CLASSES 3 "
    "MODEL.KGDET.NUM_KEYPOINTS 8 OUTPUT_DIR output/kgdet_dfa_synth": FAST_KGDET,
}
# Small synthetic sets (the cache is the clone's own).
ENV = {"KGDET_SYNTH_NUM_TRAIN": "8", "KGDET_SYNTH_NUM_VAL": "4", "OMP_NUM_THREADS": "1"}

_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
_INLINE = re.compile(r"(?<!`)`(python [^`]+)`(?!`)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
_PROGRAMS = ("python", "pip", "black", "isort")


def _docs() -> List[Tuple[str, str]]:
    return [(name, (REPO / name).read_text()) for name in DOCS]


def python_snippets() -> List[Tuple[str, str]]:
    """(id, code) of every fenced python block."""
    out = []
    for name, text in _docs():
        for m in _FENCE.finditer(text):
            if m.group(1) == "python":
                line = text[: m.start()].count("\n") + 1
                out.append((f"{name}:{line}", m.group(2)))
    return out


def _commands_of_block(block: str) -> List[str]:
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split(" #")[0].strip()
        for part in line.split("&&"):
            words = part.split()
            while words and _ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words and words[0] in _PROGRAMS:
                commands.append(" ".join(words))
    return commands


def shell_commands() -> List[Tuple[str, str]]:
    """(id, command) of every shell command in the READMEs, in order of appearance."""
    out = []
    for name, text in _docs():
        found = []
        for m in _FENCE.finditer(text):
            if m.group(1) != "python":
                for k, cmd in enumerate(_commands_of_block(m.group(2))):
                    found.append((m.start(), k, cmd))
        for m in _INLINE.finditer(text):
            found.append((m.start(), 0, " ".join(m.group(1).replace("\\|", "|").split())))
        for pos, _, cmd in sorted(found):
            out.append((f"{name}:{text[:pos].count(chr(10)) + 1}", cmd))
    return out


def _env(clone: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(ENV)
    env["KGDET_SYNTH_CACHE"] = str(clone / "synthetic_cache")
    paths = [str(REPO / "projects" / "KGDet"), str(REPO / "projects" / "DFA")]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


def _run(command: str, clone: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    command = re.sub(r"^python\b", shlex.quote(sys.executable), command)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=clone,
        env=_env(clone),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh "clone" where the :data:`RUN` commands have run (in README order)."""
    root = tmp_path_factory.mktemp("clone")
    for entry in REPO.iterdir():
        if entry.name not in ("output", ".git"):
            (root / entry.name).symlink_to(entry)
    documented = [cmd for _, cmd in shell_commands()]
    missing = [cmd for cmd in RUN if cmd not in documented]
    assert not missing, f"commands the README test runs are no longer in a README: {missing}"
    for cmd in sorted(RUN, key=documented.index):
        proc = _run(cmd + " " + shlex.join(RUN[cmd]), root)
        assert proc.returncode == 0, f"`{cmd}` failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
    return root


def test_readme_has_snippets_and_commands():
    assert len(python_snippets()) >= 3
    assert any(cmd in RUN for _, cmd in shell_commands())


@pytest.mark.slow
def test_run_commands_wrote_their_outputs(clone):
    assert (clone / "output" / "kgdet_synth" / "model_final.pth").is_file()
    drawings = sorted((clone / "output" / "kgdet_synth" / "demo").glob("*.jpg"))
    assert len(drawings) == 2, drawings
    assert (clone / "output" / "dfa_synth" / "model_final.pth").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "snippet_id,code", python_snippets(), ids=[i for i, _ in python_snippets()]
)
def test_python_snippet_runs_as_written(clone, snippet_id, code, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(code)
    proc = _run(f"python {shlex.quote(str(script))}", clone)
    assert proc.returncode == 0, f"snippet {snippet_id} failed:\n{proc.stderr[-4000:]}"
    for path in re.findall(r"[\"'](output/[^\"']+\.(?:jpg|png))[\"']", code):
        assert (clone / path).is_file(), f"snippet {snippet_id} did not write {path}"


_HELP: Dict[str, str] = {}


def _help(script: str) -> str:
    if script not in _HELP:
        proc = _run(f"python {script} --help", REPO, timeout=300)
        assert proc.returncode == 0, f"`python {script} --help` failed:\n{proc.stderr[-3000:]}"
        # No warning before the tool does anything (third-party ones are filtered by kgdet.cli).
        assert "Warning" not in proc.stderr, f"`python {script} --help` warns:\n{proc.stderr}"
        _HELP[script] = proc.stdout
    return _HELP[script]


def _all_config_keys() -> set:
    cfg = get_cfg()
    add_kgdet_config(cfg)
    add_dfa_config(cfg)
    keys, stack = set(), [("", cfg)]
    while stack:
        prefix, node = stack.pop()
        for k, v in node.items():
            if isinstance(v, dict):
                stack.append((f"{prefix}{k}.", v))
            else:
                keys.add(prefix + k)
    return keys


def check_command(command: str) -> List[str]:
    """Problems of one documented command checked without running it (empty: fine)."""
    words = command.split()
    problems = []
    if words[0] == "pip" or words[:3] == ["python", "-m", "pip"]:
        for flag, value in zip(words, words[1:]):
            if flag == "-r" and not (REPO / value).is_file():
                problems.append(f"{value} does not exist")
        if "-e" in words and not (REPO / "setup.py").is_file():
            problems.append("setup.py does not exist")
        return problems
    if words[0] in ("black", "isort"):
        return problems
    if words[:3] == ["python", "-m", "pytest"]:
        for w in words[3:]:
            if not w.startswith("-") and not (REPO / w).exists():
                problems.append(f"test path {w} does not exist")
        return problems
    if words[:2] == ["python", "-m"] and len(words) > 2:
        script, words = f"-m {words[2]}", words[1:]  # a module's command line, e.g. the self-check
    elif words[0] != "python" or len(words) < 2 or not words[1].endswith(".py"):
        return [f"unrecognised command form: {command}"]
    else:
        script = words[1]
        if not (REPO / script).is_file():
            return [f"{script} does not exist"]
    help_text = _help(script)
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", help_text))
    keys = _all_config_keys()
    for w in words[2:]:
        w = w.strip("[]()|\"'")
        flag = re.match(r"--[a-z][a-z0-9-]*", w)
        if flag and flag.group(0) not in options:
            problems.append(f"{script} has no option {flag.group(0)}")
        if re.fullmatch(r"configs/[\w.-]+\.yaml", w) and not (REPO / w).is_file():
            problems.append(f"{w} does not exist")
        if _CONFIG_KEY.match(w) and w not in keys:
            problems.append(f"unknown config key {w}")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize(
    "command_id,command", shell_commands(), ids=[i for i, _ in shell_commands()]
)
def test_documented_command_is_valid(command_id, command):
    problems = check_command(command)
    assert not problems, f"{command_id}: `{command}`: " + "; ".join(problems)


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    readme = [c for _, c in shell_commands() if c.startswith("python -m pytest tests ")]
    assert readme, "README shows no command running the whole suite"
    for cmd in readme:
        assert cmd.split(" ", 1)[1] in ci, f"`{cmd}` is not what .ci/run runs"
