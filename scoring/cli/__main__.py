from scoring.cli import main

main()
