"""Backends behind the ``DataPlaneClient`` contract (imported lazily by the factory)."""
