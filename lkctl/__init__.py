"""lkctl: LinuxKit virtual machines run like containers, driven from Python and invoke."""

__version__ = "0.1.0"

__all__ = ["__version__"]
