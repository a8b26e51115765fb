"""AI Battle HTTP gateway."""
