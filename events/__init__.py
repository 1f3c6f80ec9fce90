"""editflow.events: the wire contracts (CloudEvents) and the NATS JetStream plumbing.

Owns: event schemas shared by producer and consumer, stream and consumer
provisioning, the dead letter. Imports only ``editflow.core``.
"""
