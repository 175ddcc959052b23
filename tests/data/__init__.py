"""Tests of cnnnumba.data."""
