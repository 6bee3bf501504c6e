from guardtune.cli import main

main()
