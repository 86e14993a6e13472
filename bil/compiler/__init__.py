"""The front end's passes over the IR, rendering a checked program, and lowering to JAX."""
