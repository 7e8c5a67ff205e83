"""Arrow-backed persistent collections (see DESIGN.md, Collections)."""
