"""The client side of Comet: tokenize locally, run the protocol, hold the output."""
