"""Stand-in for modules.paths: the data and models folders (a test sets them)."""

data_path = "."
models_path = "./models"
