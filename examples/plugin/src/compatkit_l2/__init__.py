"""An example of a compatkit method that lives outside compatkit (see method.py)."""
