"""encfs-photo: a zero-knowledge encrypted filesystem for photographers."""

__version__ = "0.1.0"
