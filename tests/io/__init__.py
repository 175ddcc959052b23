"""Tests of cnnnumba.io."""
