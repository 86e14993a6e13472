"""The bottom layer: source text and spans, diagnostics, the typed IR (imports nothing else of bil)."""
