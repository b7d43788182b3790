"""Options and commands: the option vocabulary (dataclass fields → typer flags), devices and precision, the
command builder, and the core's own commands' bodies (`lmlab demo`, `lmlab doctor`)."""
