.PHONY: demo test

# Set up .venv if needed; `weightinit init` the bundled ResNet-50 config: print the init report,
# write out/resnet50.safetensors and out/resnet50-report.md.
demo:
	bash scripts/run.sh example

# Set up .venv if needed, lint and run the whole test suite.
test:
	bash scripts/run.sh test
