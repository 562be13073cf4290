"""lanecount train."""
