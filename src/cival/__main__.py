from cival.cli import main

main()
