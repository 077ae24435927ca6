"""eval layer (see DESIGN §6)."""
