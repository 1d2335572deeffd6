"""Helpers the tests and the benches share (as `optuna.testing` serves Optuna's): a tiny study file, a sweep
as a real process and checks on what it stored (`stores`), servers on a free port (`servers`). Plain
functions, no pytest; nothing in the tool itself imports them."""
