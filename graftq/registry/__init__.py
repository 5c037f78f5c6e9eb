"""Versioned entities in Redis: the Entity model, tree diffing, key names and the atomic commit."""
