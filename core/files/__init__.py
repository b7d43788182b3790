"""Files, runs and checkpoints: reading records (JSONL, CSV, Parquet, datasets), atomic writes, append-only
JSONL, run folders, durable checkpoints and the bundled examples."""
