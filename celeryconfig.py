"""Celery settings shared by the gateway (which only sends) and the workers.

Values that depend on the deployment (broker URL, queue names) come from ``config.settings`` and are applied by
``tasks.celery_app.create_celery_app``; what is here is policy, with the reason beside each line.
"""

# msgpack: chunk audio travels as raw bytes (JSON would need base64 on top of the transport's own), and unlike
# pickle it cannot execute code on the worker. JSON stays accepted for hand-sent tasks (celery call, Flower).
task_serializer = "msgpack"
accept_content = ["msgpack", "json"]
result_serializer = "json"

# Results go to clients over our own Redis channels, in order; Celery's result backend would add a round trip
# per chunk and keep results nobody reads.
task_ignore_result = True
result_backend = None

# One worker process = one model copy + its streams' state, so the pool must run tasks in that process:
# threads (default) or solo. --concurrency is then the number of chunks a worker holds at once, which bounds
# the batch size; tasks block until their chunk is recognized, so the rest waits *visibly* in Redis.
worker_pool = "threads"
worker_prefetch_multiplier = 1
# The multiplier alone does not make that bound true: chunks are acknowledged when a thread starts them, which
# returns their prefetch credit, so with --concurrency N up to N running plus N more fetched (queued inside the
# pool) left Redis, hidden from admission, queue_status and autoscaling. With this the Redis transport fetches
# only while fewer than N tasks are reserved, running ones included: at most N chunks (+1 whose fetch was in
# flight) leave Redis (tests/e2e/test_operations.py).
worker_disable_prefetch = True

# Chunks are acknowledged when they start. If a worker dies, the gateway replays the session's unfinished audio
# to another worker (its queue is private, so a redelivery would reach nobody); acks_late would only make a
# restarted worker recompute chunks of sessions that have moved on.
task_acks_late = False
task_reject_on_worker_lost = False

# Per-task events (received/started/succeeded) triple the broker traffic per chunk. Flower still lists workers
# and queue depths without them; start workers with -E to see individual tasks in Flower. Flower would switch
# them on in every worker by remote control at start: the Procfile and deployment files pass it
# --enable_events=False. (Chunks are never "sent" events: the gateway writes them to Redis itself.)
worker_send_task_events = False
task_send_sent_event = False

broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep retrying: workers must come back by themselves after a Redis restart
broker_transport_options = {
    # kombu's Redis transport emulates acks by copying every delivered message into an 'unacked' hash and
    # deleting it on ack: two more round trips and a second copy of ~26 KB per chunk. Chunks need no
    # redelivery (the gateway replays a dead worker's sessions), so messages are simply removed on delivery.
    "ack_emulation": False,
    "socket_keepalive": True,
    "health_check_interval": 10,
}
broker_pool_limit = 64  # producer connections in the gateway: one per concurrently submitting greenlet

worker_hijack_root_logger = False
worker_redirect_stdouts = False
worker_cancel_long_running_tasks_on_connection_loss = True
