from librefang.cli import main

main()
