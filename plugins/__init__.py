"""lmlab.plugins: the built-in methods, one sub-package each, registered as entry points."""
