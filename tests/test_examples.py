"""The examples run, as a user runs them, and reach what they promise."""

import os
import pathlib
import re
import subprocess
import sys

import fastpool

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_classify_sizes_reaches_its_accuracy():
    script = EXAMPLES / "classify_sizes.py"
    env = dict(os.environ)
    root = str(pathlib.Path(fastpool.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=EXAMPLES,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"test accuracy: ([0-9.]+) \(floor ([0-9.]+)\)", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) >= float(match.group(2)) >= 0.9
