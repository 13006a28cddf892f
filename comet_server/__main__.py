from comet_server.cli import main

main()
