"""Party indices. Protocol code is symmetric; these name where inputs enter."""

SERVER = 0  # holds the model weights; evaluates under HE
CLIENT = 1  # holds the text and the HE secret key; learns the output

NAMES = {SERVER: "server", CLIENT: "client"}
