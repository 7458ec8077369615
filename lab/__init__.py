"""A simulated Lync / Skype for Business deployment that speaks WS-Management."""
