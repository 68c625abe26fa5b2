from ioussl.cli import main

main()
