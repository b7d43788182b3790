"""The plugin kernel: plugins and hooks, errors, exit codes, extras and signals, the console and progress bars."""
