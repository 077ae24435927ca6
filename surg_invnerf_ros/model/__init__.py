"""model layer (see DESIGN §6)."""
