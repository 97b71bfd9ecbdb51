"""The Runstream Python SDK, for workers and apps."""
