"""frontend layer (see DESIGN §6)."""
