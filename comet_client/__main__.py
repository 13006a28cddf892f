from comet_client.cli import main

main()
