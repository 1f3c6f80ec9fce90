"""editflow.gateway: the HTTP API for OA systems that call HTTP instead of NATS.

Owns: HTTP. Publishes the same approval event as the OA system and waits for
the completion event; never imports ``editflow.inference``.
"""
