"""The example plugin's logic, testable without HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from librefang.errors import BadRequest, ServiceUnavailable

from librefang_example.schemas import EchoResponse, ExampleStats

if TYPE_CHECKING:
    from librefang.kernel import Kernel

SERVICE_KEY = "example"
EVENT_TOPIC = "example.echoed"


class ExampleService:
    """Echoes text, publishes an event per echo, and counts the events it sees on the bus."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.echoes = 0
        self.events_seen = 0

    def echo(self, text: str) -> EchoResponse:
        """Echo ``text`` back; refuse texts longer than ``[example] max_echo_chars``."""
        limit = self.kernel.config.section("example").max_echo_chars
        if len(text) > limit:
            raise BadRequest(f"text is {len(text)} characters, the limit is {limit}", code="text_too_long")
        self.echoes += 1
        self.kernel.bus.publish(EVENT_TOPIC, {"length": len(text)}, source="example")
        return EchoResponse(text=text, length=len(text))

    def stats(self) -> ExampleStats:
        return ExampleStats(echoes=self.echoes, events_seen=self.events_seen)

    async def count_events(self) -> None:
        """Background task (owned by the plugin, cancelled on shutdown or reload)."""
        with self.kernel.bus.subscribe("example.*", maxsize=100, name="example") as subscription:
            async for _event in subscription:
                self.events_seen += 1


def service_of(kernel: Kernel) -> ExampleService:
    """The running service; 503 while the plugin is not started."""
    service = kernel.services.get(SERVICE_KEY)
    if service is None:
        raise ServiceUnavailable("the example plugin is not running", code="plugin_not_running")
    return service
