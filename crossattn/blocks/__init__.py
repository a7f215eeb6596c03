"""Option sets and shared arithmetic of every block; each module registers its spec type."""
