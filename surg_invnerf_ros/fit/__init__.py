"""fit layer (see DESIGN §6)."""
