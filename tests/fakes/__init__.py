"""Fakes that speak the real wire protocols of what cannot run here (Slack, platform clouds)."""
