"""Examples of graftq in use; run them from the repository root."""
