"""Admission: what a pod becomes (the injection, a pure function) and the review around it."""
