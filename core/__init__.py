"""lmlab.core: what every lmlab method shares (plugins, errors, data, models, training, runs)."""
