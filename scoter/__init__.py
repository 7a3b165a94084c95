"""scoter: torch-free core shared by the offline pipeline, the exporter and the service."""

__version__ = "0.1.0"
