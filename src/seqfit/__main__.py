from seqfit.cli.main import main

main()
