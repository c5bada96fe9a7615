"""The BentoML service (DESIGN.md "Service contract"): the only BentoML code in the repository."""
