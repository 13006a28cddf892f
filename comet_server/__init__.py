"""The server side of Comet: model adaptation (`comet-adapt`) and, later, the service."""
