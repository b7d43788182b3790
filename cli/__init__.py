"""lmlab.cli: the Typer app, built from whatever the loaded plugins register."""
