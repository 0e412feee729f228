"""Small shared helpers: atomic and reproducible files, YAML, typed dataclasses, seeding."""
