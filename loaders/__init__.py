"""PyTorch front end for kvplane."""
