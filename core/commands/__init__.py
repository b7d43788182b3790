"""The option vocabulary (dataclass fields → typer flags), devices and precision, the command builder, demo, doctor."""
