"""A killed writer's temporary files are found by output name and removed, nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from nnsam3d.io.atomic import remove_leftover_temporaries


def _write_forever(path):
    """A child process that dies inside ``atomic_path`` (killed while writing)."""
    code = (
        "import sys, time\n"
        "from nnsam3d.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as temporary:\n"
        "    temporary.write_bytes(b'half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)


def test_the_killed_writers_temporary_goes_and_nothing_else(tmp_path):
    writer = _write_forever(tmp_path / "case_1.nii.gz")
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-") and left[0].endswith("-case_1.nii.gz")

    others = ["case_10.nii.gz", ".tmp-0123456789ab-case_10.nii.gz", ".tmp-0123456789ab-b-case_1.nii.gz",
              "case_1.nii.gz", ".tmp-notanid-case_1.nii.gz"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_leftover_temporaries(tmp_path, "case_1")
    assert [p.name for p in removed] == left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)
