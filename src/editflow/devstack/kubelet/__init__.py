"""The process kubelet: a project-owned node agent that runs Pods in their images with runc.

No container engine exists on the machines editflow develops and demos on,
so this agent plays the kubelet's part while everything above it (the Job
controller, the garbage collector, RBAC, admission) stays the real thing:

- registers a Node (Ready, pressure conditions, capacity incl. ``nvidia.com/gpu``),
- binds the Pods that fit it (node selector, tolerations, free GPU/CPU/memory)
  and marks the others Unschedulable with a reason,
- pulls each container's image from a registry (skopeo) into a store cached by
  digest, and runs it with runc on an overlay of the image's layers, honouring
  command/args/env/workingDir, volumes (bind mounts), the user settings,
  runAsNonRoot, readOnlyRootFilesystem, allowPrivilegeEscalation and capabilities
  (a missing image: ``ErrImagePull``, then ``ImagePullBackOff`` with back-off);
- gives each such Pod its own network namespace, bridged to the platform's
  loopback ports (see :mod:`.netbridge` for why this and not per-Pod port
  mapping), so two replicas can listen on one port on one node;
- runs startup, liveness and readiness probes: Ready means the probes passed,
  a failed liveness probe restarts the container;
- schedules nothing onto a cordoned node (``spec.unschedulable``) nor two Pods
  onto one ``hostPort``;
- runs each container through a small *shim* that outlives the agent, so an
  agent restart adopts Pods (and their runc containers) instead of losing them;
- only when asked (``host_images``: the tests' shared stack, the demo, ``dev
  up`` for now) maps editflow's images to host commands instead of pulling them,
- reports status like the real kubelet (Running, then Succeeded/Failed with
  exit code, reason, termination message), handles graceful deletion, and
  serves container logs to ``kubectl logs``.

Modules: :mod:`.config` (what the node offers, where images come from),
:mod:`.scheduling` (pure fit checks), :mod:`.podspec` (env, volumes, the
host-command plan), :mod:`.images` (pull and unpack), :mod:`.oci` and
:mod:`.imageplan` (the runc bundle), :mod:`.netbridge` (Pod networking),
:mod:`.probes`, :mod:`.shim` and :mod:`.runtime` (processes), :mod:`.status`
(pure status builders), :mod:`.agent` (the loops), :mod:`.logserver`
(``kubectl logs``).
"""
