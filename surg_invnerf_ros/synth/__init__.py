"""synth layer (see DESIGN §6)."""
