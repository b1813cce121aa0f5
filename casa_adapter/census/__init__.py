"""The census: every causal-LM type transformers ships, built tiny and random, wrapped and checked.

`tiny` makes the tiny configs, `scope` lists what is not a decoder-only attention LM, `checks` runs
the five checks on one type, `report` runs them all and writes `docs/families.md`, `command` is
`casa-adapter families`.
"""
