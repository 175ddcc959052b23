"""Ops: one Function subclass per operation; each validates its inputs, calls kernels and defines backward."""
