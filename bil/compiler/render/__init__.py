"""Rendering a checked program: the IR and graph dumps, the standard form as text and as LaTeX."""
