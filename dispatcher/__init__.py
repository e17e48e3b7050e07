"""dispatcher: an event-driven command dispatcher for mobile device management."""

__version__ = "0.1.0"
