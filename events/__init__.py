"""editflow.events: the wire contracts (CloudEvents) and the NATS JetStream plumbing.

Owns: event schemas shared by producer and consumer, stream and consumer
provisioning, the dead letter, the OA-side SDK. Imports only ``editflow.core``
(and nats-py, pydantic); nothing here knows Kubernetes, S3 or the GPU.

One module per job::

    models        CloudEvents 1.0 pydantic models, versioned type names, deterministic ids
    problems      EventRejected (an InvalidInputError) with every Problem and a Reason code
    validation    parse_event(body, headers, subject=, policy=): the one door into the system
    binding       structured / binary content modes over NATS (ce-* headers)
    signing       the optional HMAC-SHA256 ``signature`` extension attribute
    connection    connect(NatsSettings): credentials, TLS, reconnects
    topology      stream/consumer names and provision() (idempotent)
    publish       publish_event(): Nats-Msg-Id = event id, retried through restarts
    consumer      run_consumer(js, handler, topology=...): the operator's entry point
    outcomes      completion_event() / publish_completion(), review_event() / publish_review()
    dlq           dead letters: write, list, show, replay, and the max-deliveries mover
    kvlimits      rate-limit windows shared through a KV bucket (the gateway's replicas)
    sdk           OAClient: submit_approval(), withdraw(), wait_for_completion()
    schemas       JSON Schemas in docs/schemas (``editflow events schemas --write``)
    worker_contract   operator <-> GPU worker (a separate contract, not on the bus)

Who calls what:

* the **operator**: ``connection.connect`` -> ``topology.provision`` ->
  ``consumer.run_consumer(js, handler, topology=Topology(settings.events))``
  (handler gets an ``ApprovalEvent`` or ``WithdrawEvent``; return = ack,
  raise ``RetryLater``/``RetriableError`` = retry, raise ``PermanentError`` =
  dead letter); when an EditJob finishes, ``outcomes.completion_event(...)``
  + ``outcomes.publish_completion(...)`` (and ``publish_review`` for NeedsReview).
* the **gateway** and OA systems: ``sdk.OAClient.connect(settings)``,
  ``submit_approval(...) -> event_id``, ``wait_for_completion(event_id, timeout)``
  (raises ``CompletionTimeout``, retriable), ``withdraw(...)``, ``close()``.
* people: ``editflow events provision|publish|withdraw|watch|schemas`` and
  ``editflow dlq list|show|replay|delete``.
"""
