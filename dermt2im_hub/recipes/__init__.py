"""The recipes shipped with the package: configs/paper.yaml and configs/demo.yaml (links to configs/)."""
