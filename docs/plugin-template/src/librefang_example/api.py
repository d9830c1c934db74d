"""What other plugins may import from this one (nothing else is public)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from librefang_example.service import service_of

if TYPE_CHECKING:
    from librefang.kernel import Kernel

__all__ = ["echo_count"]


def echo_count(kernel: Kernel) -> int:
    """How many texts the example plugin echoed since it started."""
    return service_of(kernel).echoes
