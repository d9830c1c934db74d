"""HTTP routes of the example plugin: thin handlers over :mod:`librefang_example.service`."""

from __future__ import annotations

from librefang import current_kernel
from librefang.routing import Router

from librefang_example.schemas import EchoRequest, EchoResponse, ExampleStats, Greeting, GreetingQuery
from librefang_example.service import service_of

router = Router("example")


@router.get("/api/example/greeting", cost=1, query=GreetingQuery, response=Greeting)
async def greeting(query: GreetingQuery) -> Greeting:
    """A greeting built from ``[example] greeting``."""
    config = current_kernel().config.section("example")
    return Greeting(text=f"{config.greeting}, {query.name}!")


@router.post("/api/example/echo", cost=2, body=EchoRequest, response=EchoResponse)
async def echo(body: EchoRequest) -> EchoResponse:
    """Echo a text back and publish ``example.echoed``."""
    return service_of(current_kernel()).echo(body.text)


@router.get("/api/example/stats", cost=1, response=ExampleStats)
async def stats() -> ExampleStats:
    """Counters of the running plugin."""
    return service_of(current_kernel()).stats()
