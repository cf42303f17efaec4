"""Point-in-time features: one pure function per family, one builder for all."""
from retention.features.builder import build_features
from retention.features.spec import FEATURE_NAMES, FEATURES

__all__ = ["FEATURES", "FEATURE_NAMES", "build_features"]
