"""Benchmarks: declaring and running one, its worker subprocesses, the machine and memory readings, HTTP load and
`bench retrieve`'s synthetic KILT set."""
