"""The suites shipped with dmlbench, one TOML file each (``bench list presets``, ``bench run --preset NAME``)."""
