"""Small shared helpers: atomic files, seeding, tree (de)serialisation."""
