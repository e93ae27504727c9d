"""Reliability and security: fuzzing, storms, crashes, outages and store faults (issue 9)."""
