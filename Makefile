.PHONY: demo test

# Set up .venv if needed, build the bundled ResNet-50, initialize it and print its record.
demo:
	bash scripts/run.sh example

# Set up .venv if needed, lint and run the whole test suite.
test:
	bash scripts/run.sh test
