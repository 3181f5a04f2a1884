"""modelfleet: ship ML models to fleets of edge devices and keep them healthy there."""

__version__ = "0.1.0"

__all__ = ["__version__"]
