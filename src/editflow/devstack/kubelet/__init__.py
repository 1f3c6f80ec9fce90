"""The process kubelet: a project-owned node agent that runs Pods as local processes.

No container engine exists on the machines editflow develops and demos on,
so this agent plays the kubelet's part while everything above it (the Job
controller, the garbage collector, RBAC, admission) stays the real thing:

- registers a Node (Ready, pressure conditions, capacity incl. ``nvidia.com/gpu``),
- binds the Pods that fit it (node selector, tolerations, free GPU/CPU/memory)
  and marks the others Unschedulable with a reason,
- runs each container as a local process through a small *shim* that outlives
  the agent, so an agent restart adopts Pods instead of losing them,
- reports status like the real kubelet (Running, then Succeeded/Failed with
  exit code, reason, termination message), handles graceful deletion, and
  serves container logs to ``kubectl logs``.

Modules: :mod:`.config` (what the node offers and how images map to local
commands), :mod:`.scheduling` (pure fit checks), :mod:`.podspec` (env,
volumes, path mapping), :mod:`.shim` and :mod:`.runtime` (processes),
:mod:`.status` (pure status builders), :mod:`.agent` (the loops),
:mod:`.logserver` (``kubectl logs``).
"""
