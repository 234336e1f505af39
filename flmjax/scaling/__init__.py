"""µP workflow tools above the training loop: coordinate check, hyperparameter sweep with
transfer, and loss prediction from proxies."""
