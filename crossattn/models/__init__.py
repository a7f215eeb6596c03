"""Option sets and shared arithmetic of every model; each module registers its spec type."""
