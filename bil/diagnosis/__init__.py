"""Diagnoses of a run that read the spec: an Inf/NaN traced to its sub-expression, a nonconvex lower problem."""
