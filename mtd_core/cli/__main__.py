from mtd_core.cli import run

run()
