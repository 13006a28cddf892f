"""Comet's shared layers, bottom-up: transport → he → mpc → approx → protocol.

A module may import only from layers below its own. `common.prg` (the cryptographic
random generator) sits beneath all of them and imports nothing from `common`.
"""
