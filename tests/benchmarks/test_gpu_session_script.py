"""``benchmarks/gpu_session.sh`` is what a lent GPU runs, with no second chance inside its minutes:
the script parses, and every benchmark it calls accepts the arguments it is given (each
script's own argument parser, stopped right after parsing)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"

PARSE_ONLY = """
import argparse, runpy, sys
sys.path[:0] = [{root!r}, {benchmarks!r}]

class Parsed(Exception):
    pass

original = argparse.ArgumentParser.parse_args

def parse_then_stop(self, *args, **kwargs):
    original(self, *args, **kwargs)  # exits with status 2 on an argument it does not know
    raise Parsed

argparse.ArgumentParser.parse_args = parse_then_stop
for script, arguments in {calls!r}:
    sys.argv = [script, *arguments]
    try:
        runpy.run_path(script, run_name="__main__")
    except Parsed:
        print("parsed", script, arguments)
        continue
    raise SystemExit(f"{{script}} ran without parsing its arguments")
"""


def benchmark_calls(text: str, out: str) -> list[tuple[str, list[str]]]:
    """(script path, arguments) of every ``python3 benchmarks/NAME.py ...`` line, continuations joined."""
    joined = text.replace("\\\n", " ")
    calls = []
    for match in re.finditer(r"python3 (benchmarks/\w+\.py)([^|\n]*?)(?:2>&1|\||$)", joined, flags=re.MULTILINE):
        arguments = shlex.split(match.group(2).replace('"$OUT', f'"{out}'))
        calls.append((str(ROOT / match.group(1)), arguments))
    return calls


def test_the_gpu_session_script_parses():
    completed = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr


def test_every_benchmark_it_calls_accepts_its_arguments(tmp_path):
    calls = benchmark_calls(SCRIPT.read_text(), str(tmp_path))
    scripts = {Path(script).name for script, _ in calls}
    assert {"gpu_checks.py", "profile_step.py", "step_variants.py", "interactive_latency.py"} <= scripts
    assert ["--budget-gb", "32", "--variants", "eager", "every encoder block checkpointed",
            "--output", f"{tmp_path}/step_variants_32gb.json"] in [arguments for _, arguments in calls]
    # One wrong call at the end (in the same process, to save the imports) shows the check can fail.
    wrong = (str(ROOT / "benchmarks" / "gpu_checks.py"), ["--no-such-flag"])
    code = PARSE_ONLY.format(root=str(ROOT), benchmarks=str(ROOT / "benchmarks"), calls=[*calls, wrong])
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.stdout.count("parsed ") == len(calls), completed.stderr[-2000:]
    assert completed.returncode == 2 and "unrecognized arguments: --no-such-flag" in completed.stderr
