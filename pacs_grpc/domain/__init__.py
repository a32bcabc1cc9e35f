"""Entities, validation and errors. Imports nothing outside the domain."""
