from sweep.cli import entry

raise SystemExit(entry())
