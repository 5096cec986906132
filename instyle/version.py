"""The package's version, in a leaf module: export/ stamps it into the files it writes without importing the
public API (instyle/__init__.py, whose load() imports the engine, which loads export's runners)."""
__version__ = "0.1.0"
