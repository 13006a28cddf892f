"""The server side of Comet: the gRPC service (`comet-server`: `cli`, `service`,
`registry`) and model adaptation (`comet-adapt`: `adapt`)."""
