"""pytest puts this folder on sys.path (it holds a conftest), so tests in sub-folders can import the shared
helpers here, e.g. ``from accelerate_launch import accelerate_launcher``."""
