"""The DVC stages. Each module holds a pure core function named after the stage and a
thin `main` that reads files, calls it and writes files (`python -m pipeline.stages.<name>`)."""
