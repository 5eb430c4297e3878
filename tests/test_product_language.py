"""The repository speaks of the software and its users: no words of how it was developed.

Every tracked text file (``git ls-files``) is searched for phrases that belong to a development
log rather than to a product (``PHRASES``: work sessions, tracker references, verdicts against
internal figures and the like). A hit fails the test with ``file:line``.
"""

import re
import subprocess
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

PHRASES = [
    r"\b(this|that|earlier|later|next|previous|first|second|third|fourth|fifth) sessions?\b",
    r"\bsessions? of 20\d\d\b",
    r"\bthe issue'?s?\b",
    r"\bissue #?[0-9]+\b",
    r"\bacceptance( checks?)?s?:",
    r"\bgoal of box\b",
    r"\btargets? (<=|>=|≤|≥|<|>|within)",
    r"(?-i:: (meets|MISSES)\b)",
    r"\bfit the session\b",
    r"\bthis machine'?s?\b",
    r"\bthe team'?s?\b",
]
PATTERN = re.compile("|".join(f"(?:{p})" for p in PHRASES), re.IGNORECASE)

# Phrases that are ordinary product language although they match: third-party issue numbers
# cited as the source of a data quirk ("DeepFashion2 issue #62") and legal text.
ALLOWED = [re.compile(r"DeepFashion2 issues? #", re.IGNORECASE)]
EXCLUDED_FILES = {THIS_FILE, "LICENSE"}


def _tracked_text_files():
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (the test reads the tracked files)")
    for name in out.decode().split("\0"):
        if not name or name in EXCLUDED_FILES:
            continue
        path = REPO / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (images, checkpoints)
        try:
            yield name, data.decode("utf-8")
        except UnicodeDecodeError:
            continue


def find_process_language(text: str):
    """(line number, line) of every line with a development-log phrase."""
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in PATTERN.finditer(line):
            context = line[max(0, match.start() - 20) : match.end()]
            if not any(a.search(context) for a in ALLOWED):
                hits.append((number, line.strip()))
                break
    return hits


def test_the_phrase_list_matches_what_it_should():
    for text in (
        "Fourth session of 2026-12-05",
        "The issue's grid_sample formulation",
        "see issue 15",
        "Acceptance: SCORE_THRESH_TEST",
        "far from the goal of box AP 60",
        "(target <= 0.80: meets)",
        "served from this machine's disk",
        "0.51 (target ≤ 0.70)",
        "the team's FLD contract",
        "an earlier session measured",
    ):
        assert find_process_language(text), text
    for text in (
        "(DeepFashion2 issues #56 and #83)",
        "an ONNX Runtime session",
        "regression targets of the positives",
        "ties keep the earlier GT",
    ):
        assert not find_process_language(text), text


def test_no_process_language_in_tracked_files():
    hits = [
        f"{name}:{number}: {line[:120]}"
        for name, text in _tracked_text_files()
        for number, line in find_process_language(text)
    ]
    assert not hits, "development-log wording in the product:\n" + "\n".join(hits)
