"""Request and response models of the example routes (they feed /api/openapi.json)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GreetingQuery(BaseModel):
    name: str = Field("world", min_length=1, max_length=64)


class Greeting(BaseModel):
    text: str


class EchoRequest(BaseModel):
    text: str = Field(max_length=100_000)


class EchoResponse(BaseModel):
    text: str
    length: int


class ExampleStats(BaseModel):
    echoes: int = Field(description="Texts echoed since the plugin started")
    events_seen: int = Field(description="example.* events the background task received")
