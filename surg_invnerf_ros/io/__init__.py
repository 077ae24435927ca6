"""io layer (see DESIGN §6)."""
