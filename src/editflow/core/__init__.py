"""The shared core: settings, logging, the error taxonomy and the S3 client factory.

Every component may import this package; it imports none of them, and none of
torch, diffusers, kopf or nats, so it stays cheap for the control plane.
"""
