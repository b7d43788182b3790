"""The plugin kernel: the plugin manager and its hooks, errors and exit codes, the console, optional extras,
signals and progress. Everything else in lmlab imports from here; this imports nothing of lmlab's."""
