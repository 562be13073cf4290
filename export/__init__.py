"""lanecount export."""
