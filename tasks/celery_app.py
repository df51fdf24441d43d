"""Builds the Celery app from settings; used by the worker (``tasks.celery``) and by the gateway to send tasks."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from config.redis import celery_broker
from config.settings import Settings
from tasks import wire


def create_celery_app(settings: Settings, *, worker: bool = False) -> Celery:
    """A Celery app bound to ``settings``; ``worker=True`` also registers the tasks and worker hooks."""
    app = Celery("asr", set_as_current=worker)
    app.config_from_object("celeryconfig")
    app.conf.update(
        **celery_broker(settings.broker, app.conf.broker_transport_options),
        task_default_queue=settings.queue,
        task_queues=[Queue(settings.queue, routing_key=settings.queue)],
        task_routes={wire.TASK_CHUNK: {"queue": settings.queue}, wire.TASK_CLOSE_STREAM: {"queue": settings.queue}},
    )
    app.conf.asr_settings = settings
    if worker:
        from tasks import control  # registers drain/undrain/streams, for the worker and the `celery control` CLI

        app.conf.include = ["tasks.transcribe"]
        app.steps["worker"].add(control.StopRuntime)
    return app
