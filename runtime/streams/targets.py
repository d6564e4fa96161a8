"""What a Kafka batch calls in the streams role (batch.Targets): the mapping's function and on_failure destinations.

The function runs through the executor (trigger "stream"); an on_failure record goes to a Kafka topic (the
runner's producer), an SNS topic, or a function's async queue. Kept apart from batch.py so that BatchRun's logic
is tested with a fake (tests/test_batch_unit.py) and knows nothing of the role's wiring.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Callable

from ..config import Config
from ..executor import InvocationResult
from ..functions.catalog import split_name
from ..functions.spec import Destination
from ..topics.store import Topics
from ..wiring import WithAsyncQueue


class ServiceTargets:
    def __init__(self, services: WithAsyncQueue, config: Config, *,
                 deliver_topic: Callable[[str, bytes, bytes], None]) -> None:
        self._services = services
        self._config = config
        self._deliver_topic = deliver_topic

    def arn(self, function: str) -> str:
        return self._services.executor.arn(function)

    async def invoke(self, function: str, qualifier: str | None, payload: bytes) -> InvocationResult:
        name, qualifier = split_name(function, qualifier)
        target = await self._services.catalog.resolve(name, qualifier)
        return await self._services.executor.invoke(target, payload, request_id=str(uuid.uuid4()), trigger="stream")

    async def deliver(self, destination: Destination, *, key: bytes, body: bytes) -> None:
        if destination.topic is not None:
            await asyncio.to_thread(self._deliver_topic, destination.topic, key, body)
            return
        if destination.sns is not None:          # SnsError (a topic that does not exist): retried until it does
            topics = Topics(self._services.blocking_redis, self._config, catalog=self._services.catalog,
                            asyncq=self._services.asyncq)
            await asyncio.to_thread(topics.publish, destination.sns, body.decode())
            return
        assert destination.function is not None
        name, qualifier = split_name(destination.function)
        await self._services.catalog.resolve(name, qualifier)      # NotFound: retried until it exists
        await asyncio.to_thread(self._services.asyncq.accept, function=name, qualifier=qualifier, payload=body,
                                trigger="stream-failure")
