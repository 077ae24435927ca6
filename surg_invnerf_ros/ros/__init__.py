"""ros layer (see DESIGN §6)."""
