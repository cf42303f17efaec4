"""The model: booster and calibration, training, versions on disk, the registry, drift."""
