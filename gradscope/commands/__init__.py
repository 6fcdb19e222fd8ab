"""The CLI's commands, one module each; options shared by all commands live in ``common``."""
