#!/bin/sh
# pip with the package source the build asked for (the Dockerfile's PYTHON_PACKAGES build arg):
#   index       the package index (docker/podman build on a machine with internet access)
#   wheelhouse  only the wheels in the bind-mounted images/wheelhouse/ (`make images`)
# Usage: pip-install wheel|install PIP-ARGS...
set -eu
command=$1
shift
case "${PYTHON_PACKAGES:-index}" in
  index) exec /opt/editflow/bin/pip "$command" "$@" ;;
  wheelhouse)
    exec /opt/editflow/bin/pip "$command" --no-index \
      --find-links /wheelhouse/control-plane --find-links /wheelhouse/worker "$@" ;;
  *)
    echo "build arg PYTHON_PACKAGES must be 'index' or 'wheelhouse', not '$PYTHON_PACKAGES'" >&2
    exit 2 ;;
esac
