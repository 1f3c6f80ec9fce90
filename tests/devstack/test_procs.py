"""Child-process hygiene of the platform launcher (editflow.devstack.procs)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


def test_sigterm_unwinds_a_script_so_its_temp_dirs_go(tmp_path: Path) -> None:
    """What a benchmark stopped by ``timeout`` relies on (``procs.exit_on_sigterm``)."""
    script = tmp_path / "holds_a_temp_dir.py"
    script.write_text(
        "import sys, tempfile, time\n"
        "from editflow.devstack.procs import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        f"with tempfile.TemporaryDirectory(dir={str(tmp_path)!r}) as held:\n"
        "    print(held, flush=True)\n"
        "    time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    held = Path(child.stdout.readline().strip())
    assert held.is_dir()
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == 128 + signal.SIGTERM
    assert not held.exists()
