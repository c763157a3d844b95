from ktrace.cli import run

run()
