"""lanecount edge."""
