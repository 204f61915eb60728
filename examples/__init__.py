"""Small Faust apps that use the kit (faust_guarantees), each tested by the lab (lab/apps.py)."""
