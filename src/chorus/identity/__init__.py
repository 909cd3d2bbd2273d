"""unify: identifiers, the identity graph and deterministic merges."""
