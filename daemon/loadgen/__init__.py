"""Load generators that play test calls into a running daemon (`spoofwatch loadgen twilio|rtp`)."""
