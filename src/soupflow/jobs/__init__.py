"""One module per rule's job: each takes the paths its rule names and the config, and calls the layers below."""
