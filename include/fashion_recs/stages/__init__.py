"""Preprocessing stages, one module per stage of the seed."""
