"""The shared-platform hygiene check (tests/hygiene.py) sees what a module leaves behind, and
the fault suite's diagnosis table says where each unfinished edit is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import hygiene
from tests.reliability import diagnosis


def test_a_worker_process_left_running_is_found_and_a_server_is_not(tmp_path: Path) -> None:
    script = tmp_path / "test-workers" / "sleeper.py"
    script.parent.mkdir()
    script.write_text("import time\ntime.sleep(60)\n")
    server = tmp_path / "server.py"
    server.write_text("import time\ntime.sleep(60)\n")
    worker = subprocess.Popen([sys.executable, str(script)])
    other = subprocess.Popen([sys.executable, str(server)])
    try:
        found = "\n".join(hygiene.leftover_processes())
        assert f"worker pid {worker.pid}" in found
        assert str(other.pid) not in found
        # What the session owns may outlive a module.
        holder = type("Holder", (), {"process": worker})()
        hygiene.SESSION.owned.append(holder)
        try:
            assert f"pid {worker.pid}" not in "\n".join(hygiene.leftover_processes())
        finally:
            hygiene.SESSION.owned.remove(holder)
    finally:
        for proc in (worker, other):
            proc.kill()
            proc.wait()
    assert f"pid {worker.pid}" not in "\n".join(hygiene.leftover_processes())


def test_the_roles_of_command_lines() -> None:
    assert hygiene.role("python -m editflow.cli.main operator run") == "operator"
    assert hygiene.role("python -S -E /x/editflow/devstack/kubelet/shim.py /state") == "worker"
    assert hygiene.role("python /root/.cache/editflow/test-workers/w.py --model m") == "worker"
    assert hygiene.role("/usr/bin/nats-server -js") is None


def test_the_diagnosis_table_says_where_each_unfinished_edit_is(tmp_path: Path) -> None:
    (tmp_path / "ej-b-a2.started").write_text("4242")
    editjobs = [
        {
            "metadata": {"name": "ej-a"},
            "status": {"phase": "Queued", "attempts": 0, "queuePosition": 3},
        },
        {
            "metadata": {"name": "ej-b"},
            "status": {
                "phase": "Running",
                "attempts": 2,
                "jobName": "ej-b-a2",
                "workerPod": "editflow-warm-m-x1",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Running", "message": "edit"}
                ],
            },
        },
        {"metadata": {"name": "ej-c"}, "status": {"phase": "Running", "attempts": 1}},
    ]
    table = diagnosis.stuck_table(
        editjobs,
        {"ej-a", "ej-b", "ej-c", "ej-gone"},
        marks=tmp_path,
        queue={"ej-c-a1": "handed out, unacked (seq 7)"},
        pods=[],
    )
    lines = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "not dispatched (queue position 3)" in lines["ej-a"]
    assert "running in pid 4242" in lines["ej-b"] and "editflow-warm-m-x1" in lines["ej-b"]
    assert "handed out, unacked (seq 7)" in lines["ej-c"]
    assert "(no EditJob)" in lines["ej-gone"]


def test_the_cpu_sampler_adds_up_short_lived_processes_by_kind() -> None:
    # A process's CPU after the sampler's last look at it is not seen (it is gone by the
    # next one), so each may lose up to one period's worth, more on a loaded machine where a
    # look itself takes a while: the spin is long against the period, and the bound allows it.
    spin = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    with hygiene.CpuSampler(every=0.05) as sampler:
        for _ in range(2):  # two processes of one kind, each gone before the run ends
            subprocess.run([sys.executable, "-c", spin], check=True)
    spent = sampler.used.get("python -c", 0.0)
    assert 1.5 <= spent <= 3.0, sampler.table()
    assert "python -c" in sampler.table()
