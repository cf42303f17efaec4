"""A synthetic addiction-treatment clinic that fills the data contract (``simulation``)."""

from retention.clinic.synth.config import SynthConfig
from retention.clinic.synth.frames import write
from retention.clinic.synth.simulation import generate

__all__ = ["SynthConfig", "generate", "write"]
