"""Parts of ``benchmarks/control_plane.py``: one module per job (platform, load, watches, peer).

Not installed with editflow: the benchmark runs from the repository
(``.venv/bin/python benchmarks/control_plane.py``), which puts ``benchmarks/``
on ``sys.path`` so this package imports as ``controlplane``.
"""
