"""The package version, read by the fitter (files record it) and by the packaging."""

__version__ = "0.1.0"
