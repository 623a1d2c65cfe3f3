"""Test helpers: real servers started on free ports, and waiting on conditions."""
