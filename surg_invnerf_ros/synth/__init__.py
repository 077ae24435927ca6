"""synth layer (see DESIGN §6): a synthetic stereo endoscope with exact ground truth."""

from .generate import SyntheticScene, SynthFrame, generate_sequence, time_generation

__all__ = ["SyntheticScene", "SynthFrame", "generate_sequence", "time_generation"]
