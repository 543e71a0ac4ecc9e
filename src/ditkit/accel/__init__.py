"""accel layer."""
